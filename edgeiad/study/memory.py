"""Peak memory of one study step, in-process: Linux lets a process reset its own high-water mark (VmHWM) by
writing 5 to /proc/self/clear_refs, so each fit or inference gets its own peak without a subprocess per case."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Peak:
    """peak_mb: the process's highest resident memory during the block; increase_mb: that minus the start."""

    peak_mb: float | None = None
    increase_mb: float | None = None


@contextmanager
def peak():
    """Measure the block's peak resident memory (None where /proc cannot reset the high-water mark)."""
    found = Peak()
    start = _status_mb("VmRSS")
    reset = _reset_peak()
    yield found
    high = _status_mb("VmHWM") if reset else None
    if high is not None and start is not None:
        found.peak_mb = round(high, 1)
        found.increase_mb = round(max(high - start, 0.0), 1)


def statistics_mb(model) -> float:
    """Size of what a fit produced (bank, Gaussians, learned weights), without the packaged backbone."""
    from ..runs import is_backbone_weight

    total = sum(t.numel() * t.element_size() for name, t in model.state_dict().items() if not is_backbone_weight(name))
    return total / 2**20
