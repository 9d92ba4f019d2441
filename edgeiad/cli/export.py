"""`edgeiad export`, `build-engine`, `trt-check`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ..export.profiles import known_profiles
from ..export.targets import PRECISIONS, STATS_MODES, TARGETS
from . import app, examples

console = Console()
_TARGET_HELP = "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())
_PROFILES = ", ".join(known_profiles())


def _say(message: str) -> None:
    # soft_wrap: a path or a command in a message must survive copy-paste, never be broken at 80 columns
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.command(
    epilog=examples(
        "edgeiad export patchcore --target onnx              # newest patchcore run under ./runs",
        "edgeiad export --run runs/padim-bsdata --target openvino --precision int8 --stats sidecar",
        "edgeiad export patchcore --target trt --profile jetson-orin-nano   # deferred without TensorRT",
        "edgeiad export padim --target triton --out triton-repo   # ONNX artifact + Triton model (edgeiad triton)",
    )
)
def export(
    model: str = typer.Argument(None, help="model name: its newest run under ./runs is exported unless --run says"),
    run: Path = typer.Option(None, "--run", help="run folder written by edgeiad train  [default: newest of MODEL]"),
    target: str = typer.Option(
        None, "--target", help=f"{_TARGET_HELP}; triton: the profile's target (else onnx), then `edgeiad triton`"
    ),
    precision: str = typer.Option(
        None, "--precision", help=f"{', '.join(PRECISIONS)}  [default: the profile's, else fp32]"
    ),
    stats: str = typer.Option(
        None, "--stats", help=f"{' | '.join(STATS_MODES)}: graph constants or stats.safetensors  [default: baked]"
    ),
    stats_dtype: str = typer.Option("fp32", "--stats-dtype", help="storage precision of bank/statistics: fp32|fp16"),
    batch: str = typer.Option(
        None, "--batch", help="static N, 'dynamic' or 'dynamic:MAX'  [default: the profile's, else dynamic:16]"
    ),
    profile: str = typer.Option(None, "--profile", help=f"device profile name or .toml path: {_PROFILES}"),
    out: Path = typer.Option(None, "--out", help="artifact folder  [default: artifacts/MODEL-TARGET-PRECISION-STATS]"),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact folder (atomically)"),
    sign: Path = typer.Option(
        None, "--sign", help="Ed25519 private key (PEM) to sign the manifest with; needs edgeiad[signing]"
    ),
    accept_drift: bool = typer.Option(
        False, "--accept-drift", help="fp16/int8 without labelled test images: write it even if verdicts flip"
    ),
    int8_scope: str = typer.Option(
        "all",
        "--int8-scope",
        help="int8: all (the backbone, and PatchCore's nearest-neighbour search on onnx/openvino with baked stats), "
        "backbone (the search stays fp32), or search (the search alone, fp32 backbone)",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the manifest's parity block as JSON at the end"),
) -> None:
    """Export a trained run to an artifact folder (model + manifest.json [+ stats.safetensors])."""
    from ..export import export_run
    from ..export.profiles import export_settings

    run = _pick_run(model, run)
    to_triton = (target or "").lower() == "triton"
    if to_triton:  # a thin alias: export the artifact as usual, then write it into a model repository
        target, repository, out = None, out or Path("triton-repo"), None
    chosen = export_settings(profile, target=target, precision=precision, stats=stats, batch=batch)
    if profile:
        _say(f"profile {profile}: " + ", ".join(f"{k} {v}" for k, v in chosen.items() if v is not None))
    clock = _Clock()
    options = {"out": out, "force": force, "stats_dtype": stats_dtype, "sign": sign, "accept_drift": accept_drift,
               "int8_scope": int8_scope}  # fmt: skip
    artifact = export_run(run, **chosen, **options, echo=clock.say)
    manifest = json.loads((artifact / "manifest.json").read_text())
    _report(artifact, manifest, profile, precision is not None)
    if to_triton:
        from .serving import write_triton

        write_triton(artifact, repository, None, profile, force=force)
    if json_out:
        print(json.dumps({"artifact": str(artifact), "parity": manifest.get("parity")}, indent=2))


def _pick_run(model: str | None, run: Path | None) -> Path:
    """--run as given, else the newest run of MODEL under ./runs (said aloud, so nobody exports the wrong one)."""
    from ..errors import ConfigError
    from ..runs import check_run, newest_run, read_json, run_model_name

    if run is None:
        if not model:
            raise ConfigError("nothing to export: pass MODEL (its newest run under ./runs) or --run RUN")
        run = newest_run(model)
        _say(f"run: {run} (the newest {model.lower()} run under runs/; pass --run to choose another)")
        return run
    recorded = run_model_name(read_json(check_run(run) / "config.json"), run)
    if model and model.lower() != recorded:
        raise ConfigError(f"--run {run} holds a {recorded} model, not {model}: drop MODEL or pick the matching run")
    return run


class _Clock:
    """Prefix every export step with the seconds since the export started."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._start = self._now()

    def say(self, message: str) -> None:
        _say(f"[{self._now() - self._start:5.0f} s] {message}")


def _report(artifact: Path, manifest: dict, profile: str | None, explicit_precision: bool) -> None:
    """Artifact path, parity (and where it was measured), the verdict for reduced precisions, next steps."""
    parity = manifest.get("parity") or {}
    precision = manifest["precision"]
    _say(f"artifact: {artifact}")
    if parity:
        where = f"{parity.get('backend', 'runtime')}" + (" on model.onnx" if manifest["target"] == "trt" else "")
        auroc = (
            f", AUROC {parity['exported_image_auroc']:.4f} (eager {parity['eager_image_auroc']:.4f})"
            if "exported_image_auroc" in parity
            else ""
        )
        _say(
            f"parity vs eager ({where}): max map error {parity['max_rel_map_error']:.2e} of range, "
            f"score error {parity['max_abs_score_error']:.3g}{auroc}"
        )
    drift = parity.get("drift")
    if drift:
        over = " (over the limit, accepted by --accept-drift)" if drift.get("accepted_over_limit") else ""
        _say(
            f"verdict drift on {drift['images']} good {drift['source']}: {drift['flipped']} flipped "
            f"({drift['flip_share']:.1%}, limit {drift['limit']:.0%}){over}, max score drift "
            f"{drift['max_abs_score_drift']:.3g} at threshold {drift['threshold']:.6g}"
        )
    if precision != "fp32" and not manifest.get("deferred"):  # a deferred engine is judged by build-engine
        _verdict(artifact, parity)
    if manifest.get("deferred"):
        source = f"from profile {profile}" if profile and not explicit_precision else "as asked"
        _say(
            f"deferred TensorRT artifact, {precision} {source}: TensorRT is not installed here. On the device run "
            f"`edgeiad build-engine {artifact}`; it builds model.engine and re-checks its parity against the ONNX"
        )


def _verdict(artifact: Path, parity: dict) -> None:
    """Reduced precision: how many threshold decisions moved, and the command that refits the thresholds."""
    changed, compared = parity.get("decisions_changed"), parity.get("decisions_compared")
    if changed is None:
        _say(f"thresholds were fitted on eager fp32: check them with `edgeiad threshold {artifact}`")
        return
    verdict = "same decisions as eager" if changed == 0 else "decisions differ from eager"
    _say(f"verdict: {verdict} (decisions changed on the parity images: {changed} of {compared})")
    if changed:
        _say(f"refit the thresholds on the exported model: edgeiad threshold {artifact}")


@app.command(
    "sign",
    epilog=examples(
        "edgeiad sign artifacts/padim --key signing.pem",
        "python -m edgeiad_runtime artifacts/padim part.png --trusted-key signing.pub",
    ),
)
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


@app.command(
    "build-engine",
    epilog=examples(
        "edgeiad build-engine artifacts/patchcore-trt-fp16-baked",
        "edgeiad build-engine artifacts/patchcore-trt-fp16-baked --timing-cache trt.cache",
    ),
)
def build_engine(
    artifact: Path = typer.Argument(..., help="deferred TensorRT artifact written by edgeiad export --target trt"),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="TensorRT timing cache file to reuse/update"),
) -> None:
    """Build the TensorRT engine of a deferred artifact, on the device that will run it."""
    from ..export.tensorrt import build_engine_for_artifact

    path = build_engine_for_artifact(artifact, timing_cache=timing_cache)
    from edgeiad_runtime.manifest import load_manifest

    parity = (load_manifest(artifact).get("engine") or {}).get("parity")
    _say(f"engine built: {path}")
    if parity:
        _say(
            f"engine parity vs ONNX Runtime on {parity['images']} {parity['source']} images: max map error "
            f"{parity['max_rel_map_error']:.2e} of range (limit {parity['tolerance']:g}), score error "
            f"{parity['max_abs_score_error']:.3g}, decisions changed: {parity['decisions_changed']}"
        )


@app.command(
    "trt-check",
    epilog=examples("edgeiad trt-check artifacts/patchcore-trt-fp16-baked", "edgeiad trt-check model.onnx"),
)
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
