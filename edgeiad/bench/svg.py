"""Inline SVG charts for the bench report: scatter with a step-line front, bars, latency boxes (no JS)."""

from __future__ import annotations

import html
import math

CHAR_WIDTH = 5.5  # px per character at font-size 9: enough to keep labels apart without measuring text
WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 600, 380, 64, 42, 16, 24


def text(x: float, y: float, content: str, size: int = 10, anchor: str = "start", extra: str = "") -> str:
    """An SVG <text> element with escaped content."""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>{html.escape(content)}</text>'
    )


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks per decade inside [low, high] (at least the two ends when the range is narrow)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks if len(ticks) >= 2 else [low, high]


def linear_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Evenly spaced ticks on a 1-2-5 step, at most `most` of them."""
    span = (high - low) or 1.0
    step = 10.0 ** math.floor(math.log10(span / most))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= most:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _fmt_tick(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.3g}"


def _place_labels(anchors: list[tuple[float, float, str]], box: tuple[float, float, float, float]) -> list:
    """Label positions that overlap no other label or point and stay in the plot: right, left, above, below, …"""
    left, top, right, bottom = box
    taken = [(cx - 6, cy - 6, cx + 6, cy + 6) for cx, cy, _ in anchors]  # the points themselves stay visible
    placed = []
    for cx, cy, label in anchors:
        width, height = len(label) * CHAR_WIDTH, 11.0
        candidates = [(cx + 7, cy + 3), (cx - 7 - width, cy + 3), (cx - width / 2, cy - 8), (cx - width / 2, cy + 15)]
        for k in range(1, 12):  # then further down or up, on either side, a leader line back to the point
            candidates += [(x, cy + 3 + step) for x in (cx + 7, cx - 7 - width) for step in (11 * k, -11 * k)]
        for x, y in candidates:
            rect = (x, y - height + 2, x + width, y + 2)
            inside = rect[0] >= left and rect[2] <= right and rect[1] >= top and rect[3] <= bottom
            if inside and not any(_overlap(rect, other) for other in taken):
                break
        else:
            x, y = min(max(cx + 7, left), right - width), cy + 3
            rect = (x, y - height + 2, x + width, y + 2)
        taken.append(rect)
        placed.append((x, y, label, (cx, cy)))
    return placed


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter_svg(points: list[tuple[float, float, str, str]], x_label: str, y_label: str, front: bool = False) -> str:
    """Scatter on a log x axis: points (x, y, colour, label); `front` draws the best-y-so-far step line."""
    if not points:
        return f'<svg width="{WIDTH}" height="80"><text x="10" y="40">no measured points</text></svg>'
    xs, ys = [max(p[0], 1e-6) for p in points], [p[1] for p in points]
    x0, x1 = min(xs) / 1.5, max(xs) * 1.5
    pad = (max(ys) - min(ys)) * 0.12 or 0.01
    y0, y1 = min(ys) - pad, min(max(ys) + pad, 1.0 + pad / 2)
    plot = (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM)

    def px(v: float) -> float:
        return LEFT + (math.log10(max(v, 1e-6)) - math.log10(x0)) / (math.log10(x1 / x0)) * (plot[2] - LEFT)

    def py(v: float) -> float:
        return plot[3] - (v - y0) / ((y1 - y0) or 1.0) * (plot[3] - TOP)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" class="plot">']
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot[2] - LEFT}" height="{plot[3] - TOP}" fill="#fafafa" stroke="#888"/>'
    )
    for tick in linear_ticks(y0, y1):
        y = py(tick)
        parts.append(f'<line x1="{LEFT}" x2="{plot[2]}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(text(LEFT - 5, y + 3, _fmt_tick(tick), anchor="end"))
    for tick in log_ticks(x0, x1):
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{plot[3]}" stroke="#e4e4e4"/>')
        parts.append(text(x, plot[3] + 14, _fmt_tick(tick), anchor="middle"))
    parts.append(text((LEFT + plot[2]) / 2, HEIGHT - 8, x_label, size=12, anchor="middle"))
    middle = (TOP + plot[3]) / 2
    parts.append(text(14, middle, y_label, size=12, anchor="middle", extra=f'transform="rotate(-90 14 {middle})"'))
    if front:
        parts.append(_step_line(points, px, py, plot[2]))
    for x, y, colour, label in points:
        title = f"<title>{html.escape(label)}</title>"
        parts.append(f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{colour}">{title}</circle>')
    anchors = sorted(((px(x), py(y), label) for x, y, _, label in points), key=lambda a: (a[1], a[0]))
    for x, y, label, (cx, cy) in _place_labels(anchors, plot):
        if abs(y - 3 - cy) > 12:  # moved away from its point: a thin leader line says whose label it is
            parts.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y - 3:.1f}" stroke="#bbb"/>')
        parts.append(text(x, y, label, size=9, extra='fill="#333"'))
    parts.append("</svg>")
    return "".join(parts)


def _step_line(points: list, px, py, right_edge: float) -> str:
    """Best y reachable within each x: a staircase through the front, held to the right edge."""
    best, steps = -math.inf, []
    for x, y, _, _ in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            if steps:
                steps.append((px(x), py(best)))
            steps.append((px(x), py(y)))
            best = y
    steps.append((right_edge, steps[-1][1]))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in steps)
    return f'<polyline class="front" points="{line}" fill="none" stroke="#222" stroke-width="2"/>'


def bars_svg(items: list[tuple[str, float, str]], unit: str) -> str:
    """Horizontal bars (label, value, colour)."""
    width, row = 600, 18
    if not items:
        return f'<svg width="{width}" height="40"><text x="10" y="25">no measured cases</text></svg>'
    peak = max(value for _, value, _ in items) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 10}">']
    for i, (label, value, colour) in enumerate(items):
        length, y = value / peak * 280, 5 + i * row
        parts.append(text(245, y + 12, label, anchor="end"))
        parts.append(f'<rect class="bar" x="250" y="{y + 2}" width="{length:.1f}" height="{row - 5}" fill="{colour}"/>')
        parts.append(text(254 + length, y + 12, f"{value:.0f} {unit}"))
    parts.append("</svg>")
    return "".join(parts)


def boxes_svg(items: list[tuple[str, list[float], str]]) -> str:
    """Latency per call: whiskers p1–p99, quartile box, median; the axis ends at the largest p99, slower calls
    are marked as outliers (▸ and the maximum at the edge) instead of squashing every box."""
    import numpy as np

    width, row, start, span = 600, 20, 230, 280  # room on the right for the outlier note
    if not items:
        return f'<svg width="{width}" height="40"><text x="10" y="25">no measured cases</text></svg>'
    stats = [
        (label, np.percentile(values, [1, 25, 50, 75, 99]), max(values), colour) for label, values, colour in items
    ]
    peak = max(p[4] for _, p, _, _ in stats) * 1.05 or 1.0
    height = row * len(items) + 26
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (label, (p1, q1, med, q3, p99), slowest, colour) in enumerate(stats):
        x = [start + min(v, peak) / peak * span for v in (p1, q1, med, q3, p99)]
        y = 5 + i * row
        parts.append(text(start - 5, y + 12, label, anchor="end"))
        parts.append(f'<line x1="{x[0]:.1f}" x2="{x[4]:.1f}" y1="{y + 8}" y2="{y + 8}" stroke="{colour}"/>')
        box = f'x="{x[1]:.1f}" y="{y + 2}" width="{max(x[3] - x[1], 1):.1f}" height="{row - 8}"'
        parts.append(f'<rect {box} fill="{colour}" fill-opacity="0.5" stroke="{colour}"/>')
        parts.append(f'<line x1="{x[2]:.1f}" x2="{x[2]:.1f}" y1="{y + 1}" y2="{y + row - 5}" stroke="#000"/>')
        if slowest > p99:
            parts.append(text(start + span + 4, y + 12, f"▸ max {slowest:.3g} ms", size=9, extra='fill="#a00"'))
    axis = f"0 ms · axis ends at the largest p99 ({peak / 1.05:.3g} ms); ▸ marks slower calls"
    parts.append(text(start, height - 6, axis, size=9) + "</svg>")
    return "".join(parts)
