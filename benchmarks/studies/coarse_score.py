"""Offline study (#14): PatchCore's image score fused with a stride-32 nearest-neighbour image score.

The stride-32 block (Lite0 block 14) helps EL cells as part of each patch's features but blurs the maps ("Layers"
in docs/quality-study.md). This study keeps the map and adds the deeper block only at image level: each image's
block-14 features (one per 32×32 pixels) against every training image's (an exact search, at most 60,000 rows drawn
with seed 0);
the coarse score is the mean of the top share of those distances. Both scores are standardised by the median and
interquartile range of the good test images (what a held-out split of good images would give) and added, the
coarse one weighted by w. Eager, image AUROC only: the maps do not change. PatchCore now has this score built in
(models/patchcore/coarse.py, calibrated on the training images instead); the study fits it off (`coarse_weight = 0`)
so that "default" stays the map score alone.

    python benchmarks/studies/coarse_score.py fit SET OUT        # default PatchCore fit + coarse distances
    python benchmarks/studies/coarse_score.py table OUT           # AUROC of each variant over the sets in OUT

`fit --model ensemble` fits the default ensemble instead (its own coarse score off as well); its coarse distances are
the same as PatchCore's (same training images, block and seeded draw). That is the offline table of "Ensemble: the
stride-32 image score" in docs/quality-study.md (`table OUT --shares 0.2 --weights 0.25 0.5 1`).

SET is elpv-mono, elpv-poly, a dev set name (bsdata, bsdata-full, deeppcb, cfd under ../shared/data) or a folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from patchcore_levers import DEV_SETS, study_parser

ORDER = ("bsdata", "bsdata-full", "deeppcb", "cfd", "elpv-mono", "elpv-poly")
MAX_ROWS = 60_000


def fit(args) -> None:
    import torch

    from edgeiad.data import load_dataset
    from edgeiad.data.loader import iter_batches
    from edgeiad.engine import fit_model, score_samples
    from edgeiad.models import get_model
    from edgeiad.models._ops import chunked_min_euclidean
    from edgeiad.models.feature_extractor import FeatureExtractor

    torch.set_num_threads(args.threads)
    dataset = load_dataset(str(DEV_SETS.get(args.dataset, args.dataset)))
    config = get_model(args.model).make_config(coarse_weight=0.0)  # the map score alone: the study adds its own
    started = time.perf_counter()
    model, _info = fit_model(config, dataset)  # sets config.image_size to what the data gets
    scored = score_samples(model, dataset.test, config.preprocessing())
    deep = FeatureExtractor(config.backbone, (args.block,), tuple(config.image_size))

    @torch.no_grad()
    def patches(samples):  # N × positions × channels
        out = []
        for batch, _chunk in iter_batches(samples, config.preprocessing(), 16):
            features = deep(torch.from_numpy(batch))[0]
            out.append(features.flatten(2).transpose(1, 2))
        return torch.cat(out)

    bank = patches(dataset.train)
    bank = bank.reshape(-1, bank.shape[-1])
    if len(bank) > MAX_ROWS:
        bank = bank[torch.from_numpy(np.random.default_rng(0).choice(len(bank), MAX_ROWS, replace=False))]
    test = patches(dataset.test)
    distances, _ = chunked_min_euclidean(test.reshape(-1, test.shape[-1]), bank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / f"{args.dataset}.npz",
        main=np.asarray(scored.scores, np.float64),
        labels=np.asarray(scored.labels),
        coarse=distances.reshape(len(test), -1).double().numpy(),
    )
    print(args.dataset, f"{time.perf_counter() - started:.0f} s, bank {len(bank)} rows", flush=True)


def _top(distances: np.ndarray, share: float) -> np.ndarray:
    count = max(1, int(np.ceil(share * distances.shape[1])))
    return np.sort(distances, axis=1)[:, -count:].mean(axis=1)


def _standard(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    q1, median, q3 = np.percentile(good, [25, 50, 75])
    return (values - median) / max(q3 - q1, 1e-12)


def table(args) -> None:
    from edgeiad.metrics.image import roc_auc

    paths = {name: Path(args.out) / f"{name}.npz" for name in ORDER}
    found = {name: np.load(path) for name, path in paths.items() if path.is_file()}
    rows: dict[str, list[float]] = {}
    for data in found.values():
        main, labels, coarse = data["main"], data["labels"], data["coarse"]
        good = labels == 0
        rows.setdefault("default (map score alone)", []).append(roc_auc(labels, main))
        for share in args.shares:
            score = _top(coarse, share)
            rows.setdefault(f"coarse alone, top {share:g}", []).append(roc_auc(labels, score))
            for weight in args.weights:
                fused = _standard(main, main[good]) + weight * _standard(score, score[good])
                rows.setdefault(f"fused, top {share:g}, w {weight:g}", []).append(roc_auc(labels, fused))
    print("| variant | " + " | ".join(found) + " | mean |")
    print("|---" * (len(found) + 2) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |")
    (Path(args.out) / "table.json").write_text(json.dumps({"sets": list(found), "rows": rows}, indent=1))


def main() -> None:
    parser, sub, one = study_parser(__doc__)
    one.add_argument("--block", type=int, default=14, help="backbone block whose features give the coarse score")
    one.add_argument("--model", choices=("patchcore", "ensemble"), default="patchcore", help="the map's model")
    many = sub.add_parser("table")
    many.add_argument("out")
    many.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.2])
    many.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    args = parser.parse_args()
    fit(args) if args.command == "fit" else table(args)


if __name__ == "__main__":
    main()
