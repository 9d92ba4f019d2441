"""Re-score fitted runs' image score at several `score_stride` values, without refitting (#20's TopK, #14's judge).

The feature-bank models' image score is the mean of the top `score_share` of the smoothed map, read every
`score_stride`-th pixel (models/_ops.py `map_score`). This scores each run's test set once with its eager model,
records that map score at every stride asked for, and swaps it into the run's own final score (the coarse score is
added to it affinely, so the rest of the score stays as fitted). Prints image AUROC per run and stride; the stride in
brackets is the one the graph reads (TensorRT's TopK limit raises a stride that would give too large a K).

    python benchmarks/studies/score_stride.py STUDY/cases/patchcore-default/*/run --strides 1,2,4,8

RUN is a run folder (`edgeiad train`, or the `run` folder of each `edgeiad study` case) of PatchCore, PaDiM or the
ensemble; it is scored on the dataset it was fitted on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def rescore(run: Path, strides: list[int], threads: int) -> dict:
    import torch

    from edgeiad.engine import score_samples
    from edgeiad.metrics.image import roc_auc
    from edgeiad.models import _ops
    from edgeiad.runs import load_model, run_dataset

    torch.set_num_threads(threads)
    record, model = load_model(run)
    if not hasattr(model.config, "score_stride"):
        raise SystemExit(f"{run}: {model.config.model} has no map-share image score to re-read")
    fitted = model.config.score_stride
    if fitted not in strides:  # its score is what the others are swapped for
        raise SystemExit(f"{run}: include the run's own score_stride {fitted} in --strides")
    dataset = run_dataset(record)
    recorded, read = {s: [] for s in strides}, {}
    original = _ops.map_score

    def recording(anomaly_map, score_share=0.0, stride=1):
        for wanted in strides:
            recorded[wanted].append(original(anomaly_map, score_share, wanted))
            read[wanted] = _ops.score_stride(tuple(anomaly_map.shape[-2:]), score_share, wanted) if score_share else 1
        return recorded[stride][-1]  # the run's own stride, computed above

    started = time.perf_counter()
    _ops.map_score = recording
    try:
        scored = score_samples(model, dataset.test, model.config.preprocessing())
    finally:
        _ops.map_score = original
    mains = {s: torch.cat(values).numpy() for s, values in recorded.items()}
    rest = scored.scores - mains[fitted]  # the coarse part (zero without it)
    result = {
        "run": str(run),
        "dataset": dataset.name,
        "model": model.config.model,
        "score_stride": fitted,
        "auroc": {str(s): round(float(roc_auc(scored.labels, main + rest)), 4) for s, main in mains.items()},
        "reads": {str(s): read.get(s, s) for s in strides},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--strides", default="1,4", help="comma list of score_stride values")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    strides = sorted({int(s) for s in args.strides.split(",")})
    results = []
    for run in args.runs:
        row = rescore(run, strides, args.threads)
        cells = "  ".join(f"stride {s} ({row['reads'][str(s)]}): {row['auroc'][str(s)]:.4f}" for s in strides)
        print(f"{row['model']} {row['dataset']}: {cells}", flush=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
