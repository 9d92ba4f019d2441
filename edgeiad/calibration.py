"""`edgeiad threshold`: (re)fit thresholds on a run (eager model) or an artifact (its exported outputs).

An artifact is calibrated on what it actually computes: INT8 and fp16 shift raw scores, so a threshold fitted
on the eager fp32 model can sit in the wrong place. Fitting on the exported outputs, or setting a value by
hand, rewrites only the manifest (and its hashes); the model files are untouched.
"""

from __future__ import annotations

from pathlib import Path

from .data import load_dataset
from .engine import score_samples, score_with
from .errors import ArtifactError, ConfigError
from .runs import check_run, load_model, read_json, run_dataset, write_json
from .thresholding import study_dataset, write_reports


def is_artifact(path: Path) -> bool:
    """True for an artifact folder (manifest.json), False for anything else (a run folder, or nothing)."""
    return (Path(path) / "manifest.json").is_file()


def threshold_run(run: Path, options: dict, data: str | None = None, device: str | None = None, progress=True) -> dict:
    """Re-score the run's test set with its eager model, run the study, rewrite thresholds.json and reports."""
    from .models._fitting import resolve_device

    run = check_run(run)
    record, model = load_model(run)
    dataset = run_dataset(record, data)
    device = resolve_device(device)
    preprocessing = model.config.preprocessing()
    desc = "scoring test images" if progress else None
    test = score_samples(model, dataset.test, preprocessing, device, with_masks=dataset.has_masks, progress=desc)
    train_scores = None
    if not dataset.test or options.get("val_anomalous") == 0:
        train_scores = score_samples(model, dataset.train, preprocessing, device).scores
    result = study_dataset(test, dataset, options, train_scores, model.config.seed)
    write_json(run / "thresholds.json", result)
    write_reports(run, result, f"{model.config.model} on {dataset.name}")
    return result


def threshold_artifact(folder: Path, options: dict, data: str | None = None, progress=True) -> dict:
    """Score the run's test set through the artifact itself (runtime, no torch) and store the fitted thresholds."""
    from edgeiad_runtime import Detector
    from edgeiad_runtime.manifest import load_manifest, preprocessing_of

    manifest = load_manifest(folder)
    dataset = _artifact_dataset(manifest, data)
    if not dataset.test and options.get("val_anomalous") != 0:
        raise ConfigError(f"dataset {dataset.name} has no test images: pass --data with a labelled test/ folder")
    backend = "onnxruntime" if manifest["target"] == "trt" else "auto"
    with Detector.load(folder, backend=backend) as detector:
        desc = "scoring test images through the artifact" if progress else None
        preprocessing = preprocessing_of(manifest)
        test = score_with(detector.infer, dataset.test, preprocessing, dataset.has_masks, progress=desc)
        train_scores = None
        if options.get("val_anomalous") == 0:
            train_scores = score_with(detector.infer, dataset.train, preprocessing).scores
    result = study_dataset(test, dataset, options, train_scores)
    how = f"fitted on the exported {manifest['target']}/{manifest['precision']} model's outputs"
    _rewrite(folder, manifest, result["image"], result["pixel"], result["normalization"], how, result["split"])
    return result


def _artifact_dataset(manifest: dict, data: str | None):
    """The dataset the artifact's run was trained on, read from the run's config (for its test split)."""
    run = (manifest.get("export") or {}).get("run")
    if run and (Path(run) / "config.json").is_file():
        return run_dataset(read_json(Path(run) / "config.json"), data)
    name = (manifest.get("data") or {}).get("name")
    if data or (name and name.startswith("elpv")):
        return load_dataset(data or name)
    raise ConfigError("the artifact's training run is not on this machine: pass --data with the labelled dataset")


def set_artifact_thresholds(folder: Path, image: float | None, pixel: float | None) -> dict:
    """Set raw image and/or pixel thresholds by hand; the normalisation range is widened to hold them."""
    from edgeiad_runtime.manifest import load_manifest

    if image is None and pixel is None:
        raise ConfigError("nothing to set: pass --set IMAGE_THRESHOLD and/or --set-pixel PIXEL_THRESHOLD")
    manifest = load_manifest(folder)
    norm = dict(manifest["normalization"])
    chosen = {}
    for level, value in (("image", image), ("pixel", pixel)):
        old = manifest["thresholds"][level]
        chosen[level] = {"value": float(value) if value is not None else old, "method": "set by hand"}
        if value is not None and norm["method"] != "none":
            norm[f"{level}_min"] = min(norm[f"{level}_min"], float(value))
            norm[f"{level}_max"] = max(norm[f"{level}_max"], float(value))
    _rewrite(folder, manifest, chosen["image"], chosen["pixel"], norm, "set by hand with `edgeiad threshold --set`")
    return load_manifest(folder)["thresholds"]


def _rewrite(folder, manifest, image: dict, pixel: dict, normalization: dict, how: str, split=None) -> None:
    from edgeiad_runtime.manifest import write_manifest

    data = dict(manifest)
    data["thresholds"] = {
        "image": image["value"],
        "pixel": pixel["value"],
        "method": f"image: {image['method']}, pixel: {pixel['method']}, {how}",
    }
    if split is not None:
        data["thresholds"]["split"] = {k: split[k] for k in ("val_anomalous_per_type", "seed", "validation", "test")}
    data["normalization"] = normalization
    try:
        write_manifest(folder, data)
    except ArtifactError as exc:
        raise ArtifactError(f"thresholds not written, the manifest is unchanged: {exc}") from None
