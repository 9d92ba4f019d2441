"""`edgeiad triton` (artifact → Triton model repository) and `edgeiad serve` (local PyTriton server)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..export.profiles import known_profiles
from . import app, examples

console = Console()


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _settings(profile: str | None, **given):
    from ..export.profiles import load_profile
    from ..serving import settings_from_profile

    return settings_from_profile(load_profile(profile) if profile else None, **given)


@app.command(
    epilog=examples(
        "edgeiad triton artifacts/padim --out triton-repo                 # triton-repo/padim/...",
        "edgeiad triton artifacts/patchcore-trt --out triton-repo --profile x86-cuda --name line3",
        "edgeiad triton artifacts/padim --out triton-repo --frames --name padim-frames   # raw frames in",
        "tritonserver --model-repository triton-repo                      # then RemoteDetector(URL, 'padim')",
    )
)
def triton(
    artifact: Path = typer.Argument(..., help="artifact folder written by edgeiad export"),
    out: Path = typer.Option(Path("triton-repo"), "--out", help="model repository (other models in it are kept)"),
    name: str = typer.Option(None, "--name", help="model name in the repository  [default: the artifact folder's]"),
    profile: str = typer.Option(
        None, "--profile", help=f"device profile (batch sizes, queue delay, GPU): {', '.join(known_profiles())}"
    ),
    version: int = typer.Option(1, "--version", help="model version folder"),
    instances: int = typer.Option(None, "--instances", help="model instances (parallel executions)  [default: 1]"),
    no_batching: bool = typer.Option(False, "--no-dynamic-batching", help="leave Triton's dynamic batcher off"),
    frames: bool = typer.Option(
        False, "--frames", help="Python-backend model taking raw uint8 RGB frames: preprocessing runs in Triton"
    ),
    force: bool = typer.Option(False, "--force", help="replace REPO/NAME if it exists"),
) -> None:
    """Write an artifact as a Triton model: config.pbtxt, VERSION/model file, edgeiad.json (the manifest)."""
    write_triton(artifact, out, name, profile, version, instances, not no_batching, force, frames)


def write_triton(
    artifact, out, name, profile, version=1, instances=None, dynamic_batching=True, force=False, frames=False
) -> None:
    """Write the repository entry and print its files and the next commands (also `export --target triton`)."""
    from ..serving import write_repository

    settings = _settings(profile, instances=instances, dynamic_batching=dynamic_batching)
    options = {"settings": settings, "version": version, "force": force, "echo": _say, "frames": frames}
    target = write_repository(artifact, out, name=name, **options)
    _say(f"model repository entry: {target}")
    for path in sorted(p for p in target.rglob("*") if p.is_file() and "artifact" not in p.parent.parts[-1:]):
        _say(f"  {path.relative_to(out)}")
    _say(f"serve it: tritonserver --model-repository {out}   (Triton with the matching backend)")
    _say(f"client:   edgeiad watch {target} --server http://HOST:8000 --source 0")


@app.command(
    epilog=examples(
        "edgeiad serve artifacts/padim                                # http 8000, grpc 8001, metrics 8002",
        "edgeiad serve artifacts/padim artifacts/patchcore --port 9000 --batching both",
        "edgeiad serve artifacts/padim --host 0.0.0.0                 # reachable by cameras on the network",
    )
)
def serve(
    artifacts: list[Path] = typer.Argument(..., help="artifact folders; each is served under its folder name"),
    port: int = typer.Option(8000, "--port", help="HTTP port; gRPC on port+1, metrics (/metrics) on port+2"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    name: list[str] = typer.Option(None, "--name", help="model name, one per artifact  [default: folder names]"),
    batching: str = typer.Option(
        "on", "--batching", help="dynamic batching: on, off, or both (NAME batched and NAME-nobatch, for bench)"
    ),
    profile: str = typer.Option(None, "--profile", help="device profile: preferred batch sizes, queue delay"),
    instances: int = typer.Option(None, "--instances", help="model instances per artifact  [default: 1]"),
    threads: int = typer.Option(None, "--threads", help="inference threads per instance  [default: the backend's]"),
) -> None:
    """Serve artifacts with a local Triton Inference Server (PyTriton) until Ctrl-C; needs edgeiad[serve]."""
    from ..serving.serve import serve as run_server

    settings = _settings(profile, instances=instances, threads=threads)
    run_server(artifacts, port=port, host=host, batching=batching, settings=settings, names=name or None, echo=_say)
