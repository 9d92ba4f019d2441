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
    """The staircase of picks: fastest first, a new pick only where a slower case is more accurate.

    Among cases as accurate and as fast (to the budget's two digits), the one with less peak RSS wins.
    """
    measured = sorted(
        _measured(records),
        key=lambda r: (budget_for(r["per_image_ms"]), -_auroc(r), r.get("peak_rss_mb") or 0, r["per_image_ms"]),
    )
    picks, best = [], -1.0
    for record in measured:
        if _auroc(record) <= best:
            continue
        best = _auroc(record)
        picks.append(
            {
                "budget_ms": budget_for(record["per_image_ms"]),
                "key": record["key"],
                "case": describe(record),
                "per_image_ms": record["per_image_ms"],
                "image_auroc": record["accuracy"]["image_auroc"],
                "peak_rss_mb": record.get("peak_rss_mb"),
                "size_mb": record.get("size_mb"),
            }
        )
    return picks


def _auroc(record: dict) -> float:
    return round(record["accuracy"]["image_auroc"], 4)  # differences below 1e-4 are noise, not a reason to wait


SCOPE_TEXT = {"backbone": "INT8 backbone only", "search": "INT8 search only"}  # `export --int8-scope`


def scope_of(record: dict) -> str:
    """A case's `--int8-scope` ("all" for results written before bench recorded it, and for fp32/fp16)."""
    return record.get("int8_scope") or "all"


def variant(record: dict) -> str:
    """The precision as bench names the case (`ArtifactKey.variant`): "int8-search" for an INT8 artifact whose
    backbone stayed fp32."""
    scope = scope_of(record)
    return record["precision"] if scope == "all" else f"{record['precision']}-{scope}"


def describe(record: dict) -> str:
    """model/target/precision, with stats, batch and threads only where they are not the defaults."""
    text = f"{record['model']}/{record['target']}/{record['precision']}"
    if record.get("stats") == "sidecar":
        text += "/sidecar"
    extras = [SCOPE_TEXT.get(scope_of(record), "")]
    extras.append(f"batch {record['batch']}" if record.get("batch", 1) != 1 else "")
    extras.append(f"{record['threads']} threads" if record.get("threads", 1) != 1 else "")
    if "clients" in record:  # a served model (bench --server)
        text = f"{record.get('served_as', record['model'])}/{record['precision']}"
        clients = f"{record['clients']} client{'s' if record['clients'] != 1 else ''}"
        extras += [clients, "batching" if record.get("dynamic_batching") else "no batching"]
    extras = [e for e in extras if e]
    return text + (f" ({', '.join(extras)})" if extras else "")


def recommendation_lines(picks: list[dict]) -> list[str]:
    """'for ≤ X ms on this box: case, AUROC, RSS' lines (under 80 columns for a usual case), fastest first."""
    lines = []
    for pick in picks:
        rss = f"{pick['peak_rss_mb']:.0f} MB RSS" if pick.get("peak_rss_mb") else "RSS –"
        budget = f"for ≤ {pick['budget_ms']:g} ms on this box"
        lines.append(f"{budget}: {pick['case']}, AUROC {pick['image_auroc']:.3f}, {rss}")
    return lines


PAYS_RATIO = 0.95  # a reduced precision must be at least 5 % faster than fp32 ...
PAYS_AUROC_DROP = 0.005  # ... and lose at most this much image AUROC, or fp32 stays the pick


def precision_verdicts(records: list[dict]) -> list[dict]:
    """Per case measured at fp32 and at a reduced precision (same model, target, stats, batch, threads): the
    latency ratio, the AUROC drop, and whether the reduced precision pays on this box."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for record in records:
        if record.get("status") != "ok" or not record.get("per_image_ms") or "clients" in record:
            continue
        case = tuple(record.get(k) for k in ("model", "target", "stats", "batch", "threads"))
        by_case.setdefault(case, {})[variant(record)] = record
    verdicts = []
    for (model, target, stats, batch, threads), variants in sorted(by_case.items(), key=str):
        base = variants.get("fp32")
        for name, other in sorted(variants.items()):
            if base is None or name == "fp32":
                continue
            ratio = _latency_ratio(base, other)
            drop = _drop(base, other)
            pays = ratio < PAYS_RATIO and (drop is None or drop <= PAYS_AUROC_DROP)
            verdicts.append(
                {
                    "model": model,
                    "target": target,
                    "stats": stats,
                    "threads": threads,
                    "batch": batch,
                    "precision": other["precision"],
                    "int8_scope": scope_of(other),
                    "latency_ratio": ratio,
                    "raw_latency_ratio": other["per_image_ms"] / base["per_image_ms"],
                    "auroc_drop": drop,
                    "pays": pays,
                }
            )
    return verdicts


def _latency_ratio(base: dict, other: dict) -> float:
    """Reduced-precision latency over fp32. Two cases run minutes apart, while a shared box changes speed; each case
    also timed the same fp32 backbone graph interleaved with its own calls, so where both did, the ratio of their
    e2e / fp32-backbone ratios is the one read, with the box's drift divided out."""
    mine, theirs = other.get("e2e_over_fp32_backbone"), base.get("e2e_over_fp32_backbone")
    if mine and theirs:
        return mine / theirs
    return other["per_image_ms"] / base["per_image_ms"]


def _drop(base: dict, other: dict) -> float | None:
    first, second = (r.get("accuracy") or {} for r in (base, other))
    if first.get("image_auroc") is None or second.get("image_auroc") is None:
        return None
    return first["image_auroc"] - second["image_auroc"]


def verdict_lines(verdicts: list[dict]) -> list[str]:
    """'model/target int8 vs fp32 (N threads): 0.71x latency, AUROC -0.001: pays' lines."""
    lines = []
    for v in verdicts:
        drop = "AUROC –" if v["auroc_drop"] is None else f"AUROC {round(-v['auroc_drop'], 3) + 0.0:+.3f}"
        threads = f"{v['threads']} thread{'s' if v['threads'] != 1 else ''}"
        answer = "pays" if v["pays"] else "does not pay here: keep fp32"
        sidecar = "/sidecar" if v.get("stats") == "sidecar" else ""
        scope = SCOPE_TEXT.get(scope_of(v))
        precision = f"{v['precision']} ({scope})" if scope else v["precision"]
        lines.append(
            f"{v['model']}/{v['target']}{sidecar} {precision} vs fp32 ({threads}, batch {v['batch']}): "
            f"{v['latency_ratio']:.2f}x latency, {drop}: {answer}"
        )
    return lines
