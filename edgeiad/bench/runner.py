"""`edgeiad bench`: find or train runs, export artifacts, measure every case in its own process, report.

Nothing is silently dropped: a case that cannot run here (no TensorRT, no GPU, no OpenVINO) or whose export
fails its parity check is recorded with status "skipped" or "failed" and the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..data import load_dataset
from ..errors import ConfigError, EdgeiadError
from ..runs import read_json
from .cases import ArtifactKey, Case, skip_reason
from .env import environment

SCHEMA_VERSION = 1
CASE_TIMEOUT_S = 1800


def find_run(runs_dir: Path | None, model: str, fingerprint: str) -> Path | None:
    """A finished run of `model` on the same data (same fingerprint), newest first, or None."""
    if runs_dir is None or not Path(runs_dir).is_dir():
        return None
    found = []
    # rglob does not enter symlinked folders: list the first level explicitly so linked runs count too.
    configs = set(Path(runs_dir).rglob("config.json")) | set(Path(runs_dir).glob("*/config.json"))
    for config in sorted(configs):
        try:
            record = read_json(config)
        except EdgeiadError:
            continue
        same_model = record.get("model", {}).get("model") == model
        if (
            same_model
            and record.get("data", {}).get("fingerprint") == fingerprint
            and (config.parent / "weights.safetensors").is_file()
        ):
            found.append((config.stat().st_mtime, config.parent))
    return max(found)[1] if found else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(done: int, total: int, elapsed: float, key: str) -> str:
    """'[3/8 elapsed 2m10s, ETA 4m20s] KEY': the ETA extrapolates the mean time per finished case."""
    eta = f", ETA {_duration(elapsed / done * (total - done))}" if done else ""
    return f"[{done + 1}/{total} elapsed {_duration(elapsed)}{eta}] {key}"


class Bench:
    """One bench session writing into `out` (runs/, artifacts/, backbones/, results.*)."""

    def __init__(
        self,
        out: Path,
        data: str,
        runs_dir: Path | None,
        iters: int,
        warmup: int,
        accuracy_images: int,
        overrides=None,
        echo=print,
        streams: tuple[int, ...] = (),
        stream_seconds: float = 10.0,
    ):
        if iters < 1 or warmup < 0:
            raise ConfigError(f"--iters {iters} / --warmup {warmup}: use iters >= 1 and warmup >= 0")
        if streams:
            from .streams import check_stream_counts

            check_stream_counts(tuple(streams), stream_seconds)
        self.out, self.data, self.runs_dir = Path(out), data, runs_dir
        self.iters, self.warmup, self.accuracy_images = iters, warmup, accuracy_images
        # Camera counts to run `edgeiad watch`'s loop with (streams.py), on each batch-1 case: the loop batches.
        self.streams, self.stream_seconds = tuple(streams), float(stream_seconds)
        self.overrides, self.echo = overrides or {}, echo
        self.dataset = load_dataset(data)
        self.fits: dict[str, dict] = {}

    def run(self, cases: list[Case]) -> dict:
        """Measure every case; return the results document (also written as results.json/csv/html)."""
        self.out.mkdir(parents=True, exist_ok=True)
        records, artifacts, measured = [], {}, set()
        started = time.perf_counter()
        for index, case in enumerate(cases):
            self.echo(progress_line(index, len(cases), time.perf_counter() - started, case.key))
            key = case.artifact
            if key not in artifacts:
                artifacts[key] = self._artifact(key)
            records.append(self._measure(case, artifacts[key], first=key not in measured))
            measured.add(key)
        _share_accuracy(records)
        return {
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": environment(),
            "settings": {
                "data": self.data,
                "iters": self.iters,
                "warmup": self.warmup,
                "accuracy_images": self.accuracy_images,
                **({"streams": list(self.streams), "stream_seconds": self.stream_seconds} if self.streams else {}),
            },
            "fits": self.fits,
            "cases": records,
        }

    def _run_for(self, model: str) -> Path:
        from ..engine import train

        fingerprint = self.dataset.fingerprint()
        run = find_run(self.runs_dir, model, fingerprint) or find_run(self.out / "runs", model, fingerprint)
        if run is None:
            self.echo(f"training {model} on {self.dataset.name} (no matching run in --runs)")
            run = train(
                model, self.data, out=self.out / "runs" / model, overrides=self.overrides.get(model), echo=self.echo
            )
        fit = read_json(run / "config.json").get("fit", {})
        self.fits[model] = {
            "run": str(run),
            **{k: fit.get(k) for k in ("fit_s", "embedding_s", "coreset_s", "bank_size", "n_patches")},
        }
        return run

    def _artifact(self, key: ArtifactKey) -> dict:
        """{'path', 'backbone'} of a ready artifact, or {'status', 'reason'} when it cannot exist here."""
        reason = skip_reason(key)
        if reason:
            return {"status": "skipped", "reason": reason}
        if key.model not in self.fits:
            self._run_for(key.model)
        run = Path(self.fits[key.model]["run"])
        path = self.out / "artifacts" / key.name
        try:
            if not _matches(path, run):
                from ..export import export_run

                self.echo(f"exporting {key.name}")
                export_run(
                    run,
                    key.target,
                    key.precision,
                    key.stats,
                    batch="dynamic:16",
                    out=path,
                    force=path.exists(),
                    data=self.data,
                    int8_scope=key.int8_scope,
                )
            backbone = self._backbone(key, run)
        except EdgeiadError as exc:
            return {"status": "failed", "reason": str(exc)}
        return {"path": path, "backbone": backbone}

    def _backbone(self, key: ArtifactKey, run: Path) -> dict[str, Path]:
        """The backbone-only graphs a case is timed against: 'fp32' always, and 'int8' (quantized as the artifact
        is) for an INT8 case on ONNX Runtime or OpenVINO whose backbone is INT8 (not `--int8-scope search`)."""
        from .backbone import export_backbone, made_from, quantize_reference, record_source

        folder = self.out / "backbones"
        paths = {"fp32": folder / f"{key.model}.onnx"}
        if not made_from(paths["fp32"], run):
            export_backbone(run, paths["fp32"])
            record_source(paths["fp32"], run)
        if key.precision == "int8" and key.int8_scope != "search" and key.target in ("onnx", "openvino"):
            suffix = "-int8-openvino/model.xml" if key.target == "openvino" else "-int8.onnx"
            paths["int8"] = folder / f"{key.model}{suffix}"
            if not made_from(paths["int8"], run):
                self.echo(f"quantizing {key.model}'s backbone alone to INT8 for {key.target} (the latency reference)")
                paths["int8"] = quantize_reference(run, paths["fp32"], key.target, self.dataset, folder)
                record_source(paths["int8"], run)
        return paths

    def _measure(self, case: Case, artifact: dict, first: bool) -> dict:
        record = case.to_dict()
        if "path" not in artifact:
            return {**record, **artifact}
        record["artifact_path"] = str(artifact["path"])
        manifest = json.loads((artifact["path"] / "manifest.json").read_text())
        record["size_mb"] = sum(f.stat().st_size for f in artifact["path"].iterdir() if f.is_file()) / 1e6
        record["parity"] = {
            k: (manifest.get("parity") or {}).get(k)
            for k in ("max_rel_map_error", "eager_image_auroc", "exported_image_auroc", "auroc_drop")
        }
        spec = {
            "artifact": str(artifact["path"]),
            "backend": "onnxruntime" if case.artifact.target == "trt" and manifest.get("deferred") else "auto",
            "data": self.data,
            "batch": case.batch,
            "threads": case.threads,
            "iters": self.iters,
            "warmup": self.warmup,
            "backbone": {precision: str(path) for precision, path in artifact["backbone"].items()},
            "accuracy": first,
            "accuracy_images": self.accuracy_images,
            "streams": list(self.streams) if case.batch == 1 else [],
            "stream_seconds": self.stream_seconds,
        }
        self.echo(f"measuring {case.key}")
        try:
            record.update(run_worker(spec, case.threads, bench_frames(self.dataset, case.batch)))
            record["status"] = "ok"
        except EdgeiadError as exc:
            record.update({"status": "failed", "reason": str(exc)})
        latency = (record.get("latency") or {}).get("p50_ms")
        for name, ratio in (("backbone", "e2e_over_backbone"), ("backbone_fp32", "e2e_over_fp32_backbone")):
            reference = (record.get(name) or {}).get("p50_ms")
            if reference and latency:
                record[ratio] = latency / reference
        return record


def _matches(path: Path, run: Path) -> bool:
    """An artifact already in place from this very run (so a re-run of bench does not re-export)."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return Path((data.get("export") or {}).get("run", "")).resolve() == run.resolve() and bool(data.get("parity"))


def _share_accuracy(records: list[dict]) -> None:
    """Accuracy is a property of the artifact: copy it from the case that measured it to its siblings."""
    by_artifact = {}
    for record in records:
        if "accuracy" in record:
            by_artifact[record["artifact_path"]] = record["accuracy"]
    for record in records:
        if "artifact_path" in record and "accuracy" not in record:
            record["accuracy"] = by_artifact.get(record["artifact_path"])


def bench_frames(dataset, count: int) -> list:
    """`count` RGB frames: test images first (train when there are none), cycled if there are too few."""
    from ..data import load_rgb

    samples = (dataset.test or dataset.train)[: max(count, 1)]
    frames = [load_rgb(sample) for sample in samples]
    return [frames[i % len(frames)] for i in range(count)]


def run_worker(spec: dict, threads: int, frames: list) -> dict:
    """Run one case in a fresh interpreter (threads pinned through the environment too).

    The frames travel as an .npz so the worker never loads the dataset before its RSS is read.
    """
    import numpy as np

    env = dict(
        os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
    )
    with tempfile.TemporaryDirectory(prefix="edgeiad-bench-") as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        frames_path = Path(scratch) / "frames.npz"
        np.savez(frames_path, **{f"frame{i:04d}": frame for i, frame in enumerate(frames)})
        spec_path.write_text(json.dumps({**spec, "frames": str(frames_path)}))
        command = [sys.executable, "-m", "edgeiad.bench.worker", str(spec_path), str(out_path)]
        # the camera runs are timed by their own clock: each count runs once or twice for stream_seconds
        timeout = CASE_TIMEOUT_S + 2 * len(spec.get("streams") or ()) * spec.get("stream_seconds", 0)
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeiadError(f"case timed out after {timeout:.0f} s") from None
        if done.returncode != 0 or not out_path.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise EdgeiadError(f"worker exited {done.returncode}: {lines[-1] if lines else 'no output'}")
        return json.loads(out_path.read_text())
