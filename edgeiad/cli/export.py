"""`edgeiad export`, `build-engine`, `trt-check`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ..export.targets import PRECISIONS, STATS_MODES, TARGETS
from . import app

console = Console()
_TARGET_HELP = "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False)


@app.command()
def export(
    model: str = typer.Argument(None, help="model name; may be omitted, --run says it"),
    run: Path = typer.Option(..., "--run", help="run folder written by edgeiad train"),
    target: str = typer.Option(None, "--target", help=_TARGET_HELP),
    precision: str = typer.Option(None, "--precision", help=f"one of {', '.join(PRECISIONS)}"),
    stats: str = typer.Option(None, "--stats", help=f"{' | '.join(STATS_MODES)}: graph constants or stats.safetensors"),
    stats_dtype: str = typer.Option("fp32", "--stats-dtype", help="storage precision of bank/statistics: fp32|fp16"),
    batch: str = typer.Option(None, "--batch", help="static N, 'dynamic' or 'dynamic:MAX' (default dynamic, max 16)"),
    profile: str = typer.Option(None, "--profile", help="device profile name (export/*.toml) or path"),
    out: Path = typer.Option(
        None, "--out", help="artifact folder (default artifacts/<model>-<target>-<precision>-<stats>)"
    ),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact folder (atomically)"),
    sign: Path = typer.Option(
        None, "--sign", help="Ed25519 private key (PEM) to sign the manifest with; needs edgeiad[signing]"
    ),
    accept_drift: bool = typer.Option(
        False, "--accept-drift", help="fp16/int8 without labelled test images: write it even if verdicts flip"
    ),
) -> None:
    """Export a trained run to an artifact folder (model + manifest.json [+ stats.safetensors])."""
    from ..errors import ConfigError
    from ..export import export_run
    from ..export.profiles import load_profile
    from ..runs import check_run, read_json, run_model_name

    settings = load_profile(profile) if profile else {}
    recorded = run_model_name(read_json(check_run(run) / "config.json"), run)
    if model and model.lower() != recorded:
        raise ConfigError(f"--run {run} holds a {recorded} model, not {model}: drop MODEL or pick the matching run")
    artifact = export_run(
        run,
        target=target or settings.get("target", "onnx"),
        precision=precision or settings.get("precision", "fp32"),
        stats=stats or settings.get("stats", "baked"),
        batch=batch or settings.get("batch"),
        out=out,
        force=force,
        stats_dtype=stats_dtype,
        echo=_say,
        sign=sign,
        accept_drift=accept_drift,
    )
    manifest = json.loads((artifact / "manifest.json").read_text())
    parity = manifest.get("parity") or {}
    _say(f"artifact: {artifact}")
    if parity:
        _say(
            f"parity vs eager: max map error {parity['max_rel_map_error']:.2e} of range, "
            f"score error {parity['max_abs_score_error']:.3g}"
            + (
                f", AUROC {parity['exported_image_auroc']:.4f} (eager {parity['eager_image_auroc']:.4f})"
                if "exported_image_auroc" in parity
                else ""
            )
        )
    drift = parity.get("drift")
    if drift:
        over = " (over the limit, accepted by --accept-drift)" if drift.get("accepted_over_limit") else ""
        _say(
            f"verdict drift on {drift['images']} good {drift['source']}: {drift['flipped']} flipped "
            f"({drift['flip_share']:.1%}, limit {drift['limit']:.0%}){over}, max score drift "
            f"{drift['max_abs_score_drift']:.3g} at threshold {drift['threshold']:.6g}"
        )
    if manifest.get("deferred"):
        _say(f"deferred TensorRT artifact: on the device run `edgeiad build-engine {artifact}`")


@app.command("sign")
def sign_artifact(
    artifact: Path = typer.Argument(..., help="artifact folder to sign (after `edgeiad threshold` changed it)"),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM); the runtime checks it with --trusted-key"),
) -> None:
    """Sign an artifact's manifest (digest of every file) so runtimes given the public key accept it."""
    from edgeiad_runtime.manifest import load_manifest, write_manifest
    from edgeiad_runtime.signing import load_private_key

    load_private_key(key)
    manifest = write_manifest(artifact, load_manifest(artifact), signing_key=key)
    _say(f"signed {artifact}/manifest.json with key {manifest['integrity']['signature']['key_id']}")


@app.command("build-engine")
def build_engine(
    artifact: Path = typer.Argument(..., help="deferred TensorRT artifact written by edgeiad export --target trt"),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="TensorRT timing cache file to reuse/update"),
) -> None:
    """Build the TensorRT engine of a deferred artifact, on the device that will run it."""
    from ..export.tensorrt import build_engine_for_artifact

    path = build_engine_for_artifact(artifact, timing_cache=timing_cache)
    _say(f"engine built: {path}")


@app.command("trt-check")
def trt_check(
    artifact: Path = typer.Argument(..., help="artifact folder (any target with model.onnx) or .onnx file"),
) -> None:
    """Check an ONNX graph for TensorRT 10 compatibility without TensorRT; prints what to change."""
    from ..export.trt_check import check_artifact_for_tensorrt, check_onnx_for_tensorrt, format_findings

    if artifact.suffix == ".onnx":
        findings = check_onnx_for_tensorrt(artifact)
    else:
        findings = check_artifact_for_tensorrt(artifact)
    print(format_findings(findings))
    if any(f.level == "error" for f in findings):
        raise typer.Exit(1)
