"""One bench case in its own process (no torch): load, first inference, latency, RSS, backbone-only, cameras,
accuracy.

Run as `python -m edgeiad.bench.worker SPEC.json OUT.json`; the parent reads OUT.json. A separate process per
case keeps load time and peak RSS honest: nothing another case loaded is counted here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float | None:
    """This process's peak resident set (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _percentiles(values_ms: list[float]) -> dict:
    values = np.asarray(values_ms)
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)} | {"mean_ms": float(values.mean())}


def _frames(path: str) -> list[np.ndarray]:
    """The frames the parent wrote (an .npz of uint8 RGB arrays; no pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        return [archive[name] for name in sorted(archive.files)]


def _latency(detector, frames, iters: int, warmup: int) -> dict:
    start = time.perf_counter()
    detector.predict_batch(frames, color_order="RGB")
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(warmup):
        detector.predict_batch(frames, color_order="RGB")
    calls, split = [], {"preprocess_ms": [], "inference_ms": [], "postprocess_ms": []}
    for _ in range(iters):
        start = time.perf_counter()
        results = detector.predict_batch(frames, color_order="RGB")
        calls.append((time.perf_counter() - start) * 1000)
        for key, values in split.items():
            values.append(sum(r.timings[key] for r in results))
    batch = len(frames)
    return {
        "first_inference_ms": first_ms,
        "latency": _percentiles(calls),
        "per_image_ms": float(np.median(calls)) / batch,
        "throughput_ips": batch * len(calls) / (sum(calls) / 1000),
        "split_ms": {key: float(np.median(values)) / batch for key, values in split.items()},
        "latencies_ms": [round(v, 3) for v in calls],
    }


def _backbone(path: str, manifest: dict, frames_batch: np.ndarray, threads: int, iters: int, warmup: int) -> dict:
    """Latency of a bare backbone graph (ONNX, or OpenVINO IR) on the artifact's runtime, same batch and threads."""
    if manifest["target"] == "openvino":
        import openvino as ov

        hint = manifest.get("precision_hint") or "f32"
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint}
        compiled = ov.Core().compile_model(path, "CPU", config)
        request = compiled.create_infer_request()

        def run():
            request.infer({0: frames_batch})
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run():
            session.run(None, {name: frames_batch})

    for _ in range(max(warmup, 1)):
        run()
    calls = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        calls.append((time.perf_counter() - start) * 1000)
    return _percentiles(calls)


def _accuracy(detector, dataset, limit: int) -> dict:
    """Image (and pixel, with masks) metrics computed from the exported model's own outputs."""
    from edgeiad_runtime.manifest import preprocessing_of

    from ..engine import compute_metrics, score_with
    from ..export.parity import evenly_spaced

    samples = evenly_spaced(dataset.test, limit)
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        return {"skipped": "the test set needs good and anomalous images for AUROC"}
    spec = preprocessing_of(detector.manifest)
    scored = score_with(detector.infer, samples, spec, with_masks=dataset.has_masks)
    metrics = compute_metrics(scored)
    keep = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")
    found = {"images": len(samples), **{k: float(metrics[k]) for k in keep if k in metrics}}
    return found | ({"pixel_eval": metrics["pixel_eval"]} if "pixel_eval" in metrics else {})


def measure(spec: dict) -> dict:
    """Run one case as `spec` describes it and return its record (see module doc)."""
    from edgeiad_runtime import Detector

    from ..data import load_dataset

    started = time.perf_counter()
    detector = Detector.load(spec["artifact"], backend=spec.get("backend", "auto"), threads=spec["threads"])
    record: dict = {"load_s": time.perf_counter() - started, "backend": detector.backend_name}
    record["backend_info"] = {k: str(v) for k, v in detector.backend_info.items()}
    frames = _frames(spec["frames"])  # the dataset is not loaded yet: the RSS below is the detector's own
    record.update(_latency(detector, frames, spec["iters"], spec["warmup"]))
    record["peak_rss_mb"] = peak_rss_mb()  # inference only: accuracy scoring below loads data and keeps maps
    if spec.get("backbone"):
        from edgeiad_runtime.manifest import preprocessing_of
        from edgeiad_runtime.preprocess import preprocess

        spec_in = preprocessing_of(detector.manifest)
        batch = np.stack([preprocess(frame, spec_in) for frame in frames])
        timing = (detector.manifest, batch, spec["threads"], spec["iters"], spec["warmup"])
        paths = spec["backbone"]  # {"fp32": path} and, for INT8 on ORT/OpenVINO, {"int8": the quantized one}
        record["backbone_fp32"] = _backbone(paths["fp32"], *timing)
        record["backbone"] = _backbone(paths["int8"], *timing) if "int8" in paths else record["backbone_fp32"]
    if spec.get("streams"):
        from .streams import measure_streams

        record["streams"] = measure_streams(detector, frames, tuple(spec["streams"]), spec["stream_seconds"])
    if spec.get("accuracy"):
        record["accuracy"] = _accuracy(detector, load_dataset(spec["data"]), spec.get("accuracy_images", 0))
    record["torch_imported"] = "torch" in sys.modules
    detector.close()
    return record


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    Path(args[1]).write_text(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
