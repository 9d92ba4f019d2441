"""The `edgeiad` command line: Typer app, one module per command group, errors as one red line."""

from __future__ import annotations

import os
import signal
import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EdgeiadError

app = typer.Typer(
    name="edgeiad",
    help="Train, export, run and benchmark industrial visual anomaly detectors on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
_PROCESS = {"owned": False}  # main() runs as the process itself (console script), not called by a test


def owns_process() -> bool:
    """True when the CLI is the process (it exits after the command), False when called in-process."""
    return _PROCESS["owned"]


from . import bench as _bench  # noqa: E402,F401  (registers commands on `app`)
from . import export as _export  # noqa: E402,F401
from . import study as _study  # noqa: E402,F401
from . import threshold as _threshold  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import watch as _watch  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: EdgeiadError → one line on stderr and exit 2 (traceback only with --debug)."""
    _PROCESS["owned"] = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGEIAD_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        # standalone mode: Typer handles usage errors (exit 2) and --help itself; ours propagate to here.
        app(args=argv, prog_name="edgeiad")
    except EdgeiadError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        sys.exit(130)
    finally:
        if _PROCESS["owned"]:
            # Exiting now: Python resets its handlers to the default at shutdown, so a late second Ctrl-C would
            # kill the process mid-exit (rc -2) after `watch` wrote its summary; an ignored signal stays ignored.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
