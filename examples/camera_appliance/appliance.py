#!/usr/bin/env python3
"""Camera appliance: score every frame with an edgeiad artifact and keep evidence of anomalous ones.

Needs only the torch-free runtime, with OpenCV for the camera (pip install './runtimes/python[video]').
On Ctrl-C / SIGTERM it
stops after the current frame; when the camera or stream goes away it exits 1 and lets its supervisor
(systemd Restart=always, docker --restart) start it again.
"""

import argparse
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
from edgeiad_runtime import Detector, EdgeiadError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact folder written by `edgeiad export`")
    parser.add_argument("--source", default="0", help="camera index, video file or rtsp:// URL (default 0)")
    parser.add_argument("--evidence", type=Path, default=Path("evidence"), help="folder for anomalous frames")
    parser.add_argument(
        "--trusted-key",
        action="append",
        default=[os.environ["EDGEIAD_TRUSTED_KEY"]] if os.environ.get("EDGEIAD_TRUSTED_KEY") else None,
        help="Ed25519 public key (PEM): refuse artifacts not signed by it (default $EDGEIAD_TRUSTED_KEY)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("EDGEIAD_THREADS", "0")) or None,
        help="inference threads (default $EDGEIAD_THREADS, else the backend's default)",
    )
    args = parser.parse_args()

    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        detector = Detector.load(args.artifact, threads=args.threads, trusted_keys=args.trusted_key)
    except EdgeiadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    capture = cv2.VideoCapture(int(args.source) if args.source.isdigit() else args.source)
    if not capture.isOpened():
        print(f"error: cannot open source {args.source}", file=sys.stderr)
        return 2
    args.evidence.mkdir(parents=True, exist_ok=True)
    is_file = os.path.isfile(args.source)
    frames = flagged = 0
    with detector:
        while not stopping:
            ok, frame = capture.read()
            if not ok:  # end of a file, or a camera/stream that went away
                break
            index, frames = frames, frames + 1  # 0-based frame number, as in `edgeiad watch`
            try:
                result = detector.predict(frame, color_order="BGR")  # OpenCV delivers BGR
            except EdgeiadError as exc:  # a bad frame or a NaN score: never a pass, and the line goes on
                print(f"frame {index} ERROR {exc}", file=sys.stderr, flush=True)
                continue
            if result.is_anomalous:
                flagged += 1
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
                name = f"{stamp}_frame{index:06d}_score{result.score:.3f}.jpg"
                cv2.imwrite(str(args.evidence / name), frame)
                print(f"{stamp} frame {index} ANOMALY score={result.score:.3f} -> {name}", flush=True)
    capture.release()
    print(f"stopped after {frames} frames, {flagged} anomalous", file=sys.stderr)
    return 0 if stopping or is_file else 1


if __name__ == "__main__":
    sys.exit(main())
