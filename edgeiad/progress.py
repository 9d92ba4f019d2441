"""Rich progress bars on stderr for steps that take more than a second."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_callback(description: str, enabled: bool = True):
    """Yield a callback(done, total, step=None) that drives one progress bar (a no-op when disabled); `step` names a
    later stage of the same job, which the bar then shows instead of `description`."""
    if not enabled:
        yield lambda done, total, step=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, step: str | None = None) -> None:
        bar.update(task, completed=done, total=total, description=step or description)

    with bar:
        yield update
