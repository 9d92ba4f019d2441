"""`edgeiad export`: a run folder becomes a self-describing artifact folder the torch-free runtime loads."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..runs import StagingDir, load_model, run_dataset, run_thresholds, versions
from .targets import TARGETS, Target, check_combination, get_target

if TYPE_CHECKING:  # numpy and the data loaders load with the first export, not with `edgeiad --help`
    import numpy as np

__all__ = ["INT8_SCOPES", "TARGETS", "export_run", "int8_plan", "parse_batch", "search_scope_refusal"]

DEFAULT_MAX_BATCH = 16
CALIBRATION_IMAGES = 32


def parse_batch(value: str | int | None) -> dict:
    """'dynamic' (max 16) or 'dynamic:N', or a static batch size N ≥ 1."""
    text = str(value if value is not None else "dynamic").strip().lower()
    if text == "dynamic":
        return {"mode": "dynamic", "size": None, "max": DEFAULT_MAX_BATCH}
    if text.startswith("dynamic:") and text[8:].isdigit() and int(text[8:]) >= 1:
        return {"mode": "dynamic", "size": None, "max": int(text[8:])}
    if text.isdigit() and int(text) >= 1:
        return {"mode": "static", "size": int(text), "max": int(text)}
    raise ConfigError(f"--batch {value!r} is invalid: use a positive integer, 'dynamic' or 'dynamic:MAX'")


def export_run(
    run: Path,
    target: str = "onnx",
    precision: str = "fp32",
    stats: str = "baked",
    batch: str | int | None = None,
    out: Path | None = None,
    force: bool = False,
    stats_dtype: str = "fp32",
    data: str | None = None,
    echo=None,
    sign: Path | None = None,
    accept_drift: bool = False,
    int8_scope: str = "all",
) -> Path:
    """Export a run to `out`; the artifact appears only once it passed its parity check (signed with `sign`).

    `accept_drift` writes a reduced-precision artifact even when it flips more good images' verdicts than
    the target allows (checked only without labelled test images); the manifest's parity block records it.
    `int8_scope` says what INT8 quantizes: "all" (the backbone, and on ONNX Runtime and OpenVINO with baked
    statistics PatchCore's search cross term, models/patchcore/lifted.py), "backbone", or "search" (the search
    alone, beside an fp32 backbone).
    """
    echo = echo or (lambda message: None)
    if sign is not None:
        from edgeiad_runtime.signing import load_private_key

        load_private_key(sign)  # a bad key fails now, not after minutes of export
    spec = get_target(target)
    check_combination(spec, precision, stats)
    if stats_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"--stats-dtype {stats_dtype!r} is invalid: use fp32 or fp16")
    batch_info = parse_batch(batch)
    record, model = load_model(Path(run))
    int8 = int8_plan(int8_scope, spec, precision, stats, model)
    if stats == "sidecar" and not model.stats_names:
        raise ConfigError(
            f"--stats sidecar: {model.config.model} has learned weights, no statistics a sidecar file could hold; "
            "use --stats baked"
        )
    out = Path(out) if out else Path("artifacts") / f"{model.config.model}-{spec.name}-{precision}-{stats}"
    _check_out(out, force)
    batch_info = _bounded_batch(batch_info, batch, model, echo)
    dataset = run_dataset(record, data)
    started = time.perf_counter()
    with StagingDir(out) as staging:  # swapped in atomically: --force never leaves `out` missing
        facts = _write_model_files(staging, spec, model, precision, stats, stats_dtype, batch_info, dataset, echo, int8)
        manifest = _manifest(record, model, spec, precision, stats, stats_dtype, batch_info, facts, Path(run))
        _write(staging, manifest)  # the runtime verifies it when the parity check loads the artifact
        echo("checking parity against eager PyTorch")
        from .parity import check_parity

        _record, reference = load_model(Path(run))  # untouched fp32 model: the reference
        eager_scores = _eager_scores(Path(run))
        manifest["parity"] = check_parity(staging, reference, dataset, spec, precision, eager_scores, accept_drift)
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        _write(staging, manifest, sign)
    return out


INT8_SCOPES = ("all", "backbone", "search")


def int8_plan(scope: str, spec: Target, precision: str, stats: str, model) -> dict:
    """{"backbone": quantize the backbone, "search": quantize the lifted search} for `--int8-scope`, or a
    ConfigError before anything is written when the scope cannot be honoured."""
    if scope not in INT8_SCOPES:
        raise ConfigError(f"--int8-scope {scope!r} is invalid: use {', '.join(INT8_SCOPES)}")
    if precision != "int8":
        if scope != "all":
            raise ConfigError(f"--int8-scope {scope} applies to --precision int8 only: drop it, or export int8")
        return {"backbone": False, "search": False}
    why_not = search_scope_refusal(model.config.model, hasattr(model, "lift_search"), spec.name, stats)
    if scope == "search" and why_not:
        raise ConfigError(f"--int8-scope search: {why_not}; use --int8-scope all or backbone")
    return {"backbone": scope != "search", "search": scope != "backbone" and why_not is None}


def search_scope_refusal(model: str, has_search: bool, target: str, stats: str) -> str | None:
    """Why INT8 cannot quantize `model`'s search on `target` with `stats` (None when it can)."""
    if not has_search:
        return f"{model} has no nearest-neighbour search to quantize (PatchCore and the ensemble have)"
    if target not in ("onnx", "openvino"):
        return "TensorRT keeps the search fp32 (its INT8 search is unmeasured)"
    if stats != "baked":
        return "a sidecar bank is a graph input and cannot be lifted ahead of time: use --stats baked"
    return None


def _bounded_batch(batch_info: dict, given, model, echo) -> dict:
    """The default dynamic batch, lowered for a model whose images each need a large working set (N-pad), so that
    every runtime call, and the batches `edgeiad watch` forms, stay within SCORING_MEMORY_BUDGET; an explicit
    `dynamic:N` or static N is kept, with the memory it will take."""
    from ..models._ops import SCORING_MEMORY_BUDGET, memory_bounded_batch

    largest = batch_info["max"]
    bounded = memory_bounded_batch(model, largest)  # `largest` for models that declare no working set
    if bounded >= largest:
        return batch_info
    name, per_image_gb = model.config.model, model.working_bytes_per_image() / 1e9
    if given is None or str(given).strip().lower() == "dynamic":  # the default, not an explicit dynamic:N
        budget = SCORING_MEMORY_BUDGET / 2**30
        echo(f"{name} holds ~{per_image_gb:.1f} GB per image while scoring: batch max {bounded} ({budget:.0f} GiB)")
        return {**batch_info, "max": bounded}
    echo(f"note: {name} holds ~{per_image_gb:.1f} GB per image while scoring: {largest} images need ~"
         f"{per_image_gb * largest:.0f} GB per call")  # fmt: skip
    return batch_info


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder for the artifact")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise ConfigError(f"--out {out} exists and is not empty: choose a new folder or pass --force to replace it")
        if not (out / "manifest.json").is_file():
            raise ConfigError(f"--force refused: {out} is not an edgeiad artifact folder (no manifest.json)")


def _write(folder: Path, manifest: dict, sign: Path | None = None) -> None:
    from edgeiad_runtime.manifest import write_manifest

    write_manifest(folder, manifest, signing_key=sign)


def _eager_scores(run: Path):
    import numpy as np

    path = run / "scores.csv"
    if not path.is_file():
        return None
    with open(path) as handle:
        return np.array([float(row["score"]) for row in csv.DictReader(handle)])


def calibration_batch(model, dataset) -> np.ndarray:
    """Up to 32 preprocessed training images, spread over the set, for INT8 calibration."""
    import numpy as np

    from ..data import iter_batches

    picks = np.linspace(0, len(dataset.train) - 1, min(CALIBRATION_IMAGES, len(dataset.train))).round().astype(int)
    samples = [dataset.train[i] for i in sorted(set(picks.tolist()))]
    arrays = [array for array, _ in iter_batches(samples, model.config.preprocessing(), batch_size=8)]
    if not arrays:
        raise DataError("INT8 export needs calibration images but the run's training set yielded none")
    return np.concatenate(arrays)


def _write_model_files(staging, spec: Target, model, precision, stats, stats_dtype, batch, dataset, echo,
                       int8: dict) -> dict:  # fmt: skip
    """model.onnx first (every target starts from it), then the target's own conversion."""
    from edgeiad_runtime.safetensors_io import save_file

    from .onnx import compress_fp16, export_onnx, int8_fp32_scopes, quantize_int8, search_matmuls, stats_tensors

    onnx_path = staging / "model.onnx"
    arrays = stats_tensors(model, stats_dtype)
    # `int8` (int8_plan): what INT8 quantizes. For the search, the graph reads each bank's lifted rows as
    # constants (models/patchcore/lifted.py), which a sidecar bank (a graph input) cannot be; TensorRT keeps the
    # search fp32: its INT8 search is unmeasured (no GPU here).
    search_weights = tuple(model.lift_search()) if int8["search"] else ()
    echo(f"exporting {model.config.model} to ONNX (stats {stats}, bank {stats_dtype}, batch {batch['mode']})")
    facts = export_onnx(model, onnx_path, batch, stats, stats_dtype)
    # INT8 leaves the backbone's first blocks in fp32 (BackboneSpec.int8_fp32_blocks): ONNX Runtime and TensorRT
    # quantize `int8_nodes` only. OpenVINO finds its scoring part downstream of the non-backbone nodes, so it gets
    # the whole backbone for that split and the first blocks as a float prefix for NNCF's ignored scope.
    backbone_nodes, int8_nodes = facts.pop("backbone_nodes"), facts.pop("int8_nodes")
    if stats == "sidecar":
        save_file(arrays, staging / "stats.safetensors", metadata={"model": model.config.model})
    feeds = arrays if stats == "sidecar" else {}
    calibration = calibration_batch(model, dataset) if precision == "int8" else None
    if spec.name == "onnx" and precision == "fp16":
        facts.update(compress_fp16(onnx_path, keep=getattr(model, "exact_buffers", ())))
    kept_fp32 = list(int8_fp32_scopes(model)) if int8["backbone"] else ["feature_extractor"]
    if spec.name in ("onnx", "trt") and precision == "int8":
        parts = " and ".join(p for p, on in (("the backbone", int8["backbone"]), ("the search's cross term",
                                             bool(search_weights))) if on)  # fmt: skip
        echo(f"quantizing {parts} to INT8 (the rest stays fp32)")
        signed = spec.name == "trt"  # TensorRT's Q/DQ must be symmetric int8; ORT on x86 runs U8S8 fastest
        facts.update(quantize_int8(onnx_path, calibration, int8_nodes, feeds, signed, search_weights, int8["backbone"]))
        facts["int8_kept_fp32"] = kept_fp32
    if spec.name == "openvino":
        fp32_prefix = sorted(set(backbone_nodes) - set(int8_nodes))
        search_nodes, _weights = search_matmuls(onnx_path, search_weights)
        facts["openvino"] = _to_openvino(
            onnx_path, staging, precision, calibration, backbone_nodes, feeds, echo, fp32_prefix, search_nodes,
            int8["backbone"],
        )  # fmt: skip
        if precision == "int8":
            facts["int8_kept_fp32"] = kept_fp32
    if spec.name == "trt":
        facts["engine"] = _to_tensorrt(onnx_path, staging, precision, batch, model, arrays, stats, calibration, echo)
        from .tensorrt import save_parity_images

        save_parity_images(staging, calibration_batch(model, dataset), model.config.preprocessing())
    return facts


def _to_openvino(onnx_path: Path, staging: Path, precision, calibration, backbone_nodes, feeds, echo,
                 fp32_prefix=(), search_nodes=(), quantize_backbone=True) -> dict:  # fmt: skip
    import onnx

    from .openvino import convert_to_openvino

    echo(f"converting to OpenVINO IR ({precision})")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    backbone = set(backbone_nodes)
    scoring = [node.name for node in graph.node if node.name not in backbone]
    info = convert_to_openvino(
        onnx_path, staging, precision, calibration, scoring, stats=feeds or None, fp32_nodes=list(fp32_prefix),
        int8_scoring_nodes=list(search_nodes), int8_backbone=quantize_backbone,
    )  # fmt: skip
    onnx_path.unlink()
    onnx_path.with_name(onnx_path.name + ".data").unlink(missing_ok=True)
    return info


def _to_tensorrt(onnx_path, staging, precision, batch, model, arrays, stats, calibration, echo) -> dict:
    from .tensorrt import build_engine, deferred_build_settings, tensorrt_available

    input_shape = (3, *model.image_size)
    sidecar = {name: tuple(value.shape) for name, value in arrays.items()} if stats == "sidecar" else None
    if not tensorrt_available():
        echo(
            "TensorRT is not installed here: writing a deferred artifact; build it on the device with "
            "`edgeiad build-engine ARTIFACT`"
        )
        return {
            "deferred": True,
            "trt_version": None,
            "gpu": None,
            "build": deferred_build_settings(precision, batch, input_shape, sidecar),
        }
    echo(f"building the TensorRT engine ({precision})")
    info = build_engine(
        onnx_path,
        staging / "model.engine",
        precision,
        batch,
        input_shape,
        calibration=calibration,
        sidecar_shapes=sidecar,
    )
    return {"deferred": False, **info}


def _manifest(record, model, spec: Target, precision, stats, stats_dtype, batch, facts, run: Path) -> dict:
    """Everything the runtime needs, and everything a reviewer needs to trust the artifact."""
    height, width = model.image_size
    first = batch["size"] if batch["mode"] == "static" else "batch"
    engine = facts.pop("engine", None)
    openvino = facts.pop("openvino", None)
    deferred = bool(engine and engine.pop("deferred"))
    model_file = {"onnx": "model.onnx", "openvino": "model.xml", "trt": "model.onnx" if deferred else "model.engine"}
    thresholds = run_thresholds(run)
    return {
        "schema_version": 1,
        "format": "edgeiad-artifact",
        "model": {"name": model.config.model, "config": model.config.to_dict()},
        "target": spec.name,
        "precision": precision,
        "precision_hint": openvino["precision_hint"] if openvino else None,
        "files": {
            "model": model_file[spec.name],
            "onnx": None if spec.name == "openvino" else "model.onnx",
            "stats": "stats.safetensors" if stats == "sidecar" else None,
        },
        "deferred": deferred,
        "inputs": {"image": {"shape": [first, 3, height, width], "dtype": "float32"}},
        "outputs": {"anomaly_map": {"shape": [first, 1, height, width]}, "pred_score": {"shape": [first]}},
        "batch": batch,
        "preprocessing": model.config.preprocessing().to_dict(),
        "stats": {
            "mode": stats,
            "file": "stats.safetensors" if stats == "sidecar" else None,
            "tensors": list(model.stats_names),
            "dtype": stats_dtype,
        },
        "thresholds": {
            "image": thresholds["image"]["value"],
            "pixel": thresholds["pixel"]["value"],
            # Calibrated on the eager fp32 model: reduced precisions shift raw scores (the parity block
            # records by how much); re-fitting them on the exported model is the thresholds issue's work.
            "method": f"image: {thresholds['image']['method']}, pixel: {thresholds['pixel']['method']}, "
            "calibrated on eager fp32",
        },
        "normalization": thresholds["normalization"],
        "versions": _versions(openvino, engine),
        "parity": None,
        "data": {k: record["data"].get(k) for k in ("name", "n_train", "fingerprint")},
        "engine": engine,
        "export": {"run": str(run), **facts, **({"openvino": openvino} if openvino else {})},
        **({"second_stage": model.manifest_section(record)} if hasattr(model, "manifest_section") else {}),
    }


def _versions(openvino: dict | None, engine: dict | None) -> dict:
    import onnx
    import onnxruntime

    found = {k: str(v) for k, v in versions().items()}
    found.update({"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__})
    if openvino:
        found["openvino"] = str(openvino.get("openvino"))
    if engine and engine.get("trt_version"):
        found["tensorrt"] = str(engine["trt_version"])
    return found
