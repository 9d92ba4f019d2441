"""The `edgeiad` command line: Typer app, one module per command group, errors as one red line."""

from __future__ import annotations

import os
import signal
import sys

import typer

try:  # typer >= 0.20 vendors click; older releases use click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError

from .. import __version__
from ..errors import EdgeiadError

app = typer.Typer(
    name="edgeiad",
    help="Train, export, run and benchmark industrial visual anomaly detectors on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "edgeiad[signing]" must not be read as markup
)
_PROCESS = {"owned": False}  # main() runs as the process itself (console script), not called by a test


def owns_process() -> bool:
    """True when the CLI is the process (it exits after the command), False when called in-process."""
    return _PROCESS["owned"]


def examples(*lines: str) -> str:
    """A help epilog listing example command lines (rich keeps the line breaks of a \\b block)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def error_line(message: str) -> None:
    """The one `error:` line every failure prints on stderr (red on a terminal)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        import edgeiad_runtime

        print(f"edgeiad {__version__} (runtime {edgeiad_runtime.__version__}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback(epilog=examples("edgeiad demo", "edgeiad doctor", "edgeiad export patchcore --target onnx"))
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print versions, exit"),
) -> None:
    """Train, export, run and benchmark industrial visual anomaly detectors on edge devices.

    Add --debug to any command for tracebacks and third-party output.
    """


from . import bench as _bench  # noqa: E402,F401  (registers commands on `app`)
from . import doctor as _doctor  # noqa: E402,F401
from . import export as _export  # noqa: E402,F401
from . import serving as _serving  # noqa: E402,F401
from . import study as _study  # noqa: E402,F401
from . import threshold as _threshold  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import watch as _watch  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: EdgeiadError or a usage error → one line on stderr and exit 2 (--debug: traceback)."""
    _PROCESS["owned"] = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EDGEIAD_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        with _quiet_third_party(debug):
            code = typer.main.get_command(app).main(args=argv, prog_name="edgeiad", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UsageError as exc:
        _usage_error(exc)
    except ClickException as exc:
        error_line(exc.format_message())
        sys.exit(exc.exit_code)
    except EdgeiadError as exc:
        if debug:
            raise
        error_line(str(exc))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        error_line("interrupted")
        sys.exit(130)
    finally:
        if _PROCESS["owned"]:
            # Exiting now: Python resets its handlers to the default at shutdown, so a late second Ctrl-C would
            # kill the process mid-exit (rc -2) after `watch` wrote its summary; an ignored signal stays ignored.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)


def _usage_error(exc: UsageError) -> None:
    """A mistyped command line: one `error:` line naming the command whose --help explains it (exit 2)."""
    command = exc.ctx.command_path.replace("edgeiad", "", 1).strip() if exc.ctx else ""
    if type(exc).__name__ == "NoArgsIsHelpError":  # a group typed alone: its help is the answer
        print(exc.ctx.get_help())
        sys.exit(0)
    message = exc.format_message().rstrip(".")
    error_line(f"{message}: see `edgeiad {command + ' ' if command else ''}--help`")
    sys.exit(2)


def _quiet_third_party(debug: bool):
    """Silence library warnings and NNCF's/OpenVINO's progress output unless --debug asks for everything."""
    from ..quiet import quiet_libraries

    return quiet_libraries(enabled=not debug)
