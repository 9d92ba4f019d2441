"""`edgeiad doctor`: check the environment and say what each target needs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from . import app, examples


@app.command(epilog=examples("edgeiad doctor", "edgeiad doctor --json > doctor.json"))
def doctor(
    folder: Path = typer.Option(Path("."), "--folder", help="where runs/ and artifacts/ will be written"),
    json_out: bool = typer.Option(False, "--json", help="print the checks and the environment as JSON"),
) -> None:
    """Check runtimes, CPU ISA, OpenVINO precision, TensorRT/GPU, write access and free disk."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..doctor import diagnose

    report = diagnose(folder)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    colours = {"ok": "green", "missing": "yellow", "none": "yellow", "warn": "yellow", "error": "red"}
    table = Table(title="edgeiad doctor", show_lines=False)
    for column in ("check", "status", "detail / fix"):
        table.add_column(column, overflow="fold")
    for row in report["checks"]:
        colour = colours.get(row["status"], "white")
        detail = row["detail"] + (f" → {row['fix']}" if row["fix"] else "")
        table.add_row(escape(row["check"]), f"[{colour}]{row['status']}[/{colour}]", escape(detail))
    Console().print(table)
