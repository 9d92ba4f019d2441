"""`edgeiad bench` and `edgeiad bench compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from . import app, examples

console = Console()
bench_app = typer.Typer(help="Measure latency, memory and accuracy of model × target × precision on this box.")
app.add_typer(bench_app, name="bench")


@bench_app.callback(
    invoke_without_command=True,
    epilog=examples(
        "edgeiad bench                                   # patchcore,padim x onnx,openvino, fp32",
        "edgeiad bench --models all --targets all --precisions fp32,fp16,int8 --batch 1,8 --out bench/",
        "edgeiad bench --profile intel-cpu --runs runs/",
        "edgeiad bench --models patchcore --precisions fp32,int8 --int8-scopes all,search   # search-only INT8",
        "edgeiad bench --models patchcore --threads 2 --streams 1,2,4,8   # frames/s with 1-8 cameras per box",
        "edgeiad bench --server http://127.0.0.1:8000 --models patchcore,padim --clients 1,4,16   # served models",
    ),
)
def bench(
    ctx: typer.Context,
    models: str = typer.Option("patchcore,padim", "--models", help="comma list or all; with --server: served names"),
    targets: str = typer.Option("onnx,openvino", "--targets", help="onnx,openvino,trt or all"),
    precisions: str = typer.Option("fp32", "--precisions", help="fp32,fp16,int8 or all"),
    int8_scopes: str = typer.Option(
        "all",
        "--int8-scopes",
        help="what the INT8 cases quantize, as `edgeiad export --int8-scope`: all,backbone,search or a list",
    ),
    stats: str = typer.Option("baked", "--stats", help="baked,sidecar or all"),
    data: str = typer.Option("elpv-mono", "--data", help="elpv-mono | elpv-poly | MVTec-layout folder"),
    runs: Path = typer.Option(None, "--runs", help="reuse runs found here (same model, same data fingerprint)"),
    batch: str = typer.Option("1", "--batch", help="batch sizes, e.g. 1,8"),
    threads: str = typer.Option("1", "--threads", help="thread counts, e.g. 1,2"),
    iters: int = typer.Option(200, "--iters", help="timed calls per case"),
    warmup: int = typer.Option(20, "--warmup", help="untimed calls before timing"),
    accuracy_images: int = typer.Option(400, "--accuracy-images", help="test images scored per artifact (0: all)"),
    profile: str = typer.Option(None, "--profile", help="device profile (export/*.toml): its targets/precisions"),
    out: Path = typer.Option(Path("bench"), "--out", help="output folder (runs/, artifacts/, results.*)"),
    json_out: bool = typer.Option(False, "--json", help="print the recommendations and one flat row per case"),
    server: str = typer.Option(
        None, "--server", help="measure models on this Triton server (http://HOST:8000 or grpc://HOST:8001)"
    ),
    clients: str = typer.Option("1,4,16", "--clients", help="with --server: concurrent clients, e.g. 1,4,16"),
    streams: str = typer.Option(
        None,
        "--streams",
        help="camera counts, e.g. 1,2,4,8: frames/s of `edgeiad watch` with that many live "
        "cameras, batched and one frame per call, for each batch-1 case",
    ),
    stream_seconds: float = typer.Option(10.0, "--stream-seconds", help="with --streams: seconds per run"),
) -> None:
    """Train or reuse runs, export, and measure every case in its own process; write results.json/csv/html."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.cases import parse_counts, plan
    from ..bench.report import print_table, write_results
    from ..bench.runner import Bench

    log = Console(stderr=True) if json_out else console  # --json: stdout carries only the JSON

    def echo(message: str) -> None:
        log.print(message, markup=False, highlight=False, soft_wrap=True)

    if server and streams:
        from ..errors import ConfigError

        raise ConfigError("--streams runs local artifacts with live cameras; a --server is measured with --clients")
    if server:
        document = _bench_server(server, models, clients, data, iters, warmup, echo)
    else:
        if profile:
            targets, precisions, stats, threads = _from_profile(profile, targets, precisions, stats, threads)
        cases = plan(models, targets, precisions, stats, batch, threads, int8_scopes)
        counts = tuple(parse_counts(streams, "streams")) if streams else ()
        echo(f"{len(cases)} cases → {out}")
        bench = Bench(out, data, runs, iters, warmup, accuracy_images, echo=echo, streams=counts,
                      stream_seconds=stream_seconds)  # fmt: skip
        document = bench.run(cases)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = write_results(out, document)
    if json_out:
        import json

        from ..bench.report import flatten

        rows = [flatten(record) for record in document["cases"]]
        verdicts = document.get("precision_verdicts", [])
        print(json.dumps({"recommendations": document["recommendations"], "precision_verdicts": verdicts,
                          "cases": rows}, indent=2))  # fmt: skip
        return
    print_table(document, console)
    console.print(f"written: {', '.join(str(path) for path in paths.values())}", markup=False)


def _bench_server(server: str, models: str, clients: str, data: str, iters: int, warmup: int, echo) -> dict:
    """Served models × client counts, on frames of `data` (the same frames each case)."""
    from ..bench.cases import parse_counts
    from ..bench.remote import bench_server
    from ..bench.runner import bench_frames
    from ..data import load_dataset
    from ..errors import ConfigError

    names = [name.strip() for name in models.split(",") if name.strip()]
    if not names or iters < 1 or warmup < 0:
        raise ConfigError("--server needs --models NAME[,NAME] (served model names), --iters >= 1, --warmup >= 0")
    counts = parse_counts(clients, "clients")
    frames = bench_frames(load_dataset(data), 32)
    echo(f"{len(names)} served models × clients {counts} on {server}")
    return bench_server(server, names, counts, frames, iters, warmup, echo)


def _from_profile(name: str, targets: str, precisions: str, stats: str, threads: str) -> tuple[str, str, str, str]:
    """A device profile fixes the target, precision, stats mode and thread count it describes."""
    import os

    from ..export.profiles import load_profile

    profile = load_profile(name)
    count = profile.get("threads")
    threads = str(count or os.cpu_count() or 1) if count is not None else threads
    return profile.get("target", targets), profile.get("precision", precisions), profile.get("stats", stats), threads


@bench_app.command(
    "compare",
    epilog=examples(
        "edgeiad bench compare bench-old/results.json bench/results.json",
        "edgeiad bench compare base.json new.json --threshold 0.05 || echo regression   # exit 1 in CI",
    ),
)
def compare_cmd(
    base: Path = typer.Argument(..., help="results.json of the reference run"),
    new: Path = typer.Argument(..., help="results.json to compare against it"),
    threshold: float = typer.Option(0.10, "--threshold", help="flag metrics that got worse by more than this share"),
    json_out: bool = typer.Option(False, "--json", help="print the per-case ratios and regressions as JSON"),
) -> None:
    """Per-case ratios new/base; exit 1 when a case regressed (slower, bigger, or AUROC down by > 0.01).

    Exit codes: 0 no regression, 1 at least one regression, 2 unreadable input.
    """
    import json

    from ..bench.compare import compare, load_results
    from ..bench.report import compare_table

    rows = compare(load_results(base), load_results(new), threshold)
    flagged = sum(bool(row["regressions"]) for row in rows)
    if json_out:
        print(json.dumps({"threshold": threshold, "cases": rows, "regressions": flagged}, indent=2))
    else:
        console.print(compare_table(rows, f"{new} vs {base}"))
        summary = f"{len(rows)} cases compared, {flagged} with regressions (threshold {threshold:.0%})"
        console.print(summary, markup=False)
        if not rows:
            console.print("no case is present in both files", markup=False)
    if flagged:
        raise typer.Exit(1)
