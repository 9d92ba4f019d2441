"""One bench case in its own process (no torch): load, first inference, RSS, latency (in blocks interleaved with
the backbone-only graphs), cameras, accuracy.

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


ROUNDS = 10  # timed blocks per graph: the e2e and backbone calls alternate block by block


def _timed(runners: dict, iters: int) -> dict[str, list[float]]:
    """Milliseconds of `iters` calls of each (warm) runner, timed in up to ROUNDS interleaved blocks (e2e, then
    each backbone graph, then e2e again ...): a box that slows down for a few seconds slows every graph alike, so
    the e2e / backbone ratios are read from the same stretch of time."""
    calls: dict[str, list[float]] = {name: [] for name in runners}
    rounds = max(1, min(ROUNDS, iters))
    for block in range(rounds):
        count = iters // rounds + (block < iters % rounds)
        for name, run in runners.items():
            for _ in range(count):
                start = time.perf_counter()
                run()
                calls[name].append((time.perf_counter() - start) * 1000)
    return calls


def _e2e(detector, frames) -> tuple:
    """(runner of one `predict_batch` call, its per-stage timings so far) for `_timed`."""
    split = {"preprocess_ms": [], "inference_ms": [], "postprocess_ms": []}

    def run():
        results = detector.predict_batch(frames, color_order="RGB")
        for key, values in split.items():
            values.append(sum(r.timings[key] for r in results))

    return run, split


def _latency(calls: list[float], split: dict, batch: int) -> dict:
    """The e2e record from its timed calls and their per-stage timings."""
    return {
        "latency": _percentiles(calls),
        "per_image_ms": float(np.median(calls)) / batch,
        "throughput_ips": batch * len(calls) / (sum(calls) / 1000),
        "split_ms": {key: float(np.median(values)) / batch for key, values in split.items()},
        "latencies_ms": [round(v, 3) for v in calls],
    }


def _backbone(path: str, manifest: dict, frames_batch: np.ndarray, threads: int):
    """A runner of a bare backbone graph (ONNX, or OpenVINO IR) on the artifact's runtime, same batch and threads."""
    if manifest["target"] == "openvino":
        import openvino as ov

        hint = manifest.get("precision_hint") or "f32"
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint}
        compiled = ov.Core().compile_model(path, "CPU", config)
        request = compiled.create_infer_request()

        def run():
            request.infer({0: frames_batch})

        return run
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run():
        session.run(None, {name: frames_batch})

    return run


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
    start = time.perf_counter()
    detector.predict_batch(frames, color_order="RGB")
    record["first_inference_ms"] = (time.perf_counter() - start) * 1000
    e2e, split = _e2e(detector, frames)
    for _ in range(spec["warmup"]):
        e2e()
    for values in split.values():
        values.clear()  # the split is read from the timed calls only
    # inference only, read before a backbone graph loads: accuracy scoring below loads data and keeps maps
    record["peak_rss_mb"] = peak_rss_mb()
    paths = spec.get("backbone") or {}  # {"fp32": path} and, for an INT8 backbone on ORT/OpenVINO, {"int8": ...}
    runners = {"e2e": e2e}
    if paths:
        from edgeiad_runtime.manifest import preprocessing_of
        from edgeiad_runtime.preprocess import preprocess

        spec_in = preprocessing_of(detector.manifest)
        batch = np.stack([preprocess(frame, spec_in) for frame in frames])
        for name, path in paths.items():
            runners[name] = _backbone(path, detector.manifest, batch, spec["threads"])
            for _ in range(max(spec["warmup"], 1)):
                runners[name]()
    calls = _timed(runners, spec["iters"])
    record.update(_latency(calls["e2e"], split, len(frames)))
    if paths:
        record["backbone_fp32"] = _percentiles(calls["fp32"])
        record["backbone"] = _percentiles(calls["int8"]) if "int8" in paths else record["backbone_fp32"]
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
