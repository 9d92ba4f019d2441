"""`python -m edgeiad_runtime ARTIFACT IMAGE...`: score images and print one JSON line per image."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .backends.base import BACKENDS
from .detector import Detector
from .errors import EdgeiadError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgeiad_runtime", description=__doc__)
    parser.add_argument("artifact", help="artifact folder written by `edgeiad export`")
    parser.add_argument("images", nargs="+", help="image files to score")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    parser.add_argument("--device", default=None, help="cpu / cuda / CPU / GPU (backend-specific)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (backend default if omitted)")
    parser.add_argument("--no-verify", action="store_true", help="skip the digest and sha256 checks of the artifact")
    parser.add_argument(
        "--trusted-key",
        action="append",
        default=None,
        metavar="PEM",
        help="Ed25519 public key; repeat for several: refuse artifacts not signed by one of them (extra: signing)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit 0 when every image was scored, 1 when some failed, 2 when the artifact cannot load."""
    args = _parser().parse_args(argv)
    try:
        detector = Detector.load(
            args.artifact,
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            verify=not args.no_verify,
            trusted_keys=args.trusted_key,
        )
    except (EdgeiadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with detector:
        for path in args.images:
            try:
                line = {"path": path, **detector.predict(path).to_dict()}
            except (EdgeiadError, OSError) as exc:  # one bad image must not stop the others
                line, failed = {"path": path, "error": str(exc)}, failed + 1
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
