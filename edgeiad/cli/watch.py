"""`edgeiad watch`: score a camera, stream, video or folder frame by frame with an exported artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app, examples


@app.command(
    epilog=examples(
        "edgeiad watch artifacts/padim --source 0 --jsonl frames.jsonl",
        "edgeiad watch artifacts/padim --source rtsp://camera/stream --save-anomalies anomalies/",
        "edgeiad watch artifacts/padim --source parts/ --max-frames 100",
        "edgeiad watch artifacts/padim --source 0 --source 1 --source rtsp://cam3/stream   # 3 cameras, batched",
        "edgeiad watch padim --server grpc://inference-box:8001 --source 0      # model padim on a Triton server",
    )
)
def watch(
    artifact: Path = typer.Argument(
        ..., help="artifact folder written by edgeiad export; with --server: a served model name or its folder"
    ),
    source: list[str] = typer.Option(
        ...,
        "--source",
        help="camera index (0), video file, rtsp:// or http:// URL, image file or folder of images; repeat it for "
        "several cameras: the newest frame of each is scored in one batched call",
    ),
    jsonl: Path = typer.Option(
        None, "--jsonl", help="append the per-frame JSON lines to FILE (default: stdout; events also go to stdout)"
    ),
    save_anomalies: Path = typer.Option(
        None, "--save-anomalies", help="folder for each anomalous frame + its heat-map overlay (PNG)"
    ),
    overlay_video: Path = typer.Option(None, "--overlay-video", help="mp4 (mp4v) of the anomalous frames' overlays"),
    backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | openvino | tensorrt"),
    device: str = typer.Option(None, "--device", help="backend device: CPU / GPU (OpenVINO), cuda:N (TensorRT)"),
    threads: int = typer.Option(None, "--threads", help="inference threads (0 or omitted: the backend's default)"),
    max_frames: int = typer.Option(None, "--max-frames", help="stop after scoring N frames"),
    color_order: str = typer.Option("BGR", "--color-order", help="channel order of the frames: BGR (OpenCV) or RGB"),
    realtime: bool = typer.Option(
        False, "--realtime", help="play a file/folder at its frame rate and drop frames like a camera (default: all)"
    ),
    loop: bool = typer.Option(False, "--loop", help="file/folder: start again at the end (soak tests, demos)"),
    stall_timeout: float = typer.Option(
        10.0, "--stall-timeout", help="seconds without a frame before a live stream is reported stalled and reopened"
    ),
    trusted_key: list[Path] = typer.Option(
        None, "--trusted-key", help="Ed25519 public key (PEM), repeatable: refuse artifacts not signed by one"
    ),
    server: str = typer.Option(
        None, "--server", help="Triton server that runs the model: http://HOST:8000 or grpc://HOST:8001"
    ),
    model: str = typer.Option(None, "--model", help="with --server: the served model's name  [default: ARTIFACT's]"),
    batch_wait_ms: float = typer.Option(
        10.0, "--batch-wait-ms", help="several sources: the longest a frame waits for the other sources' frames"
    ),
    max_batch: int = typer.Option(
        None,
        "--max-batch",
        help="several sources: frames per call [default: one per source]; 1 scores them round-robin, which keeps "
        "per-frame latency lowest where batching adds no throughput (PatchCore on a CPU)",
    ),
) -> None:
    """Score every frame of a live source (newest frame first, reconnecting) or a file/folder (every frame).

    One JSON line per scored frame, `reconnect`/`stalled`/`skipped`/`frame_error` events and a final `summary`
    line; Ctrl-C or SIGTERM: exit 0. An output that cannot be written: summary, one error line, exit 2.
    """
    from ..errors import OutputError
    from ..watch import watch as run_watch
    from . import owns_process

    summary = run_watch(
        artifact,
        source if len(source) != 1 else source[0],
        jsonl=jsonl,
        save_anomalies=save_anomalies,
        overlay_video=overlay_video,
        backend=backend,
        device=device,
        threads=threads,
        max_frames=max_frames,
        color_order=color_order,
        realtime=realtime,
        loop=loop,
        stall_timeout=stall_timeout,
        trusted_keys=trusted_key or None,
        restore_signals=not owns_process(),  # main() ignores late signals from here on
        server=server,
        model=model,
        batch_wait_ms=batch_wait_ms,
        max_batch=max_batch,
    )
    if "output_error" in summary:
        raise OutputError(summary["output_error"])
