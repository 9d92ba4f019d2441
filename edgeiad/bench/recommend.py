"""Which case to deploy for a latency budget: the most accurate one that fits, lighter on a tie."""

from __future__ import annotations

import math


def budget_for(value: float) -> float:
    """`value` rounded up to two significant digits: the budget line a reader would write down (4.13 → 4.2)."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(value / scale - 1e-9) * scale, 10)


def _measured(records: list[dict]) -> list[dict]:
    return [
        r
        for r in records
        if r.get("status") == "ok"
        and r.get("per_image_ms")
        and (r.get("accuracy") or {}).get("image_auroc") is not None
    ]


def recommendations(records: list[dict]) -> list[dict]:
    """One pick per latency budget where the pick changes: best image AUROC within the budget, then less RSS."""
    measured = _measured(records)
    picks, seen = [], set()
    for budget in sorted({budget_for(r["per_image_ms"]) for r in measured}):
        fits = [r for r in measured if r["per_image_ms"] <= budget]
        best = max(fits, key=lambda r: (round(r["accuracy"]["image_auroc"], 4), -(r.get("peak_rss_mb") or 0)))
        if best["key"] in seen:
            continue
        seen.add(best["key"])
        picks.append(
            {
                "budget_ms": budget,
                "key": best["key"],
                "case": describe(best),
                "per_image_ms": best["per_image_ms"],
                "image_auroc": best["accuracy"]["image_auroc"],
                "peak_rss_mb": best.get("peak_rss_mb"),
                "size_mb": best.get("size_mb"),
            }
        )
    return picks


def describe(record: dict) -> str:
    """model/target/precision, with stats, batch and threads only where they are not the defaults."""
    text = f"{record['model']}/{record['target']}/{record['precision']}"
    if record.get("stats") == "sidecar":
        text += "/sidecar"
    extras = [f"batch {record['batch']}" if record.get("batch", 1) != 1 else ""]
    extras.append(f"{record['threads']} threads" if record.get("threads", 1) != 1 else "")
    extras = [e for e in extras if e]
    return text + (f" ({', '.join(extras)})" if extras else "")


def recommendation_lines(picks: list[dict]) -> list[str]:
    """'for ≤ X ms on this box: case, AUROC, RSS' lines, fastest budget first."""
    lines = []
    for pick in picks:
        rss = f"{pick['peak_rss_mb']:.0f} MB RSS" if pick.get("peak_rss_mb") else "RSS –"
        lines.append(
            f"for ≤ {pick['budget_ms']:g} ms on this box: {pick['case']}: AUROC {pick['image_auroc']:.3f}, "
            f"{pick['per_image_ms']:.3g} ms/img, {rss}"
        )
    return lines
