"""Offline PatchCore lever study (#14): levers that `edgeiad study --set` cannot express.

`fit` trains PatchCore eagerly on one set with config overrides and optional changes to the input or the features,
prints image / pixel AUROC and AUPRO, and saves the raw patch-score maps; `scores` compares image-score functions on
saved maps without refitting. Results and their reading: docs/quality-study.md ("ELPV mono").

    python benchmarks/studies/patchcore_levers.py fit elpv-mono study/levers/base
    python benchmarks/studies/patchcore_levers.py fit elpv-mono study/levers/l14 --set "layers=(4, 10, 14)"
    python benchmarks/studies/patchcore_levers.py fit elpv-mono study/levers/flips --bank-flips \
        --set coreset_ratio=0.00125   # 8 views of each cell, same bank size
    python benchmarks/studies/patchcore_levers.py scores study/levers/base study/levers/l14

SET is elpv-mono, elpv-poly, a dev set name (bsdata, bsdata-full, deeppcb, cfd under ../shared/data) or a folder.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DEV_SETS = {"bsdata": SHARED / "bsdata", **{name: SHARED / "dev" / name for name in ("bsdata-full", "deeppcb", "cfd")}}
SHARES = {"max": 0.0, **{f"top {share:g} %": share / 100 for share in (0.5, 1, 1.5, 2, 3, 5, 10)}}


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """Per-image contrast stretch: the 1st..99th percentile of the gray level onto 0..255."""
    gray = rgb.mean(axis=2, dtype=np.float32)
    low, high = np.percentile(gray, [1, 99])
    gray = np.clip((gray - low) * 255.0 / max(float(high - low), 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _patch(args) -> None:
    """Monkeypatch the lever under study into edgeiad's own fit and scoring path."""
    import edgeiad.data.loader as loader
    import edgeiad.engine as engine
    import edgeiad.models.patchcore.torch_model as patchcore

    if args.stretch:
        read = loader.load_rgb
        loader.load_rgb = lambda sample: _stretch(read(sample))
    if args.deep_weight != 1.0:
        aggregate = patchcore.aggregate_features

        def weighted(features, neighbourhood=1, mode="bilinear"):
            features = list(features)
            features[-1] = features[-1] * args.deep_weight
            return aggregate(features, neighbourhood, mode)

        patchcore.aggregate_features = weighted
    if args.bank_flips:
        batches = engine.iter_batches

        def with_flips(samples, preprocessing, *rest, **options):
            for array, chunk in batches(samples, preprocessing, *rest, **options):
                views = [array, array[..., ::-1], array[..., ::-1, :], array[..., ::-1, ::-1]]
                if array.shape[-1] == array.shape[-2]:
                    views += [np.swapaxes(view, -1, -2) for view in views]
                for view in views:
                    yield np.ascontiguousarray(view), chunk

        engine.iter_batches = with_flips  # fit_model reads its training batches through this name only


def setup(args):
    """Torch threads set; (config overrides from `--set key=literal`, the dataset `args.dataset` names)."""
    import torch

    from edgeiad.data import load_dataset

    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key.strip()] = ast.literal_eval(value.strip())
    return overrides, load_dataset(str(DEV_SETS.get(args.dataset, args.dataset)))


def fit(args) -> None:
    from edgeiad.data.elpv import BUILTIN
    from edgeiad.engine import compute_metrics, fit_model, score_samples
    from edgeiad.models.patchcore.torch_model import PatchCoreConfig, PatchCoreModel

    overrides, dataset = setup(args)
    config = PatchCoreConfig(**overrides)
    _patch(args)
    started = time.perf_counter()
    model, _info = fit_model(config, dataset)
    fit_s = time.perf_counter() - started
    raw = []
    to_map = PatchCoreModel.to_map

    def keep_raw(self, patch_scores):
        raw.append(patch_scores[:, 0].float().numpy().copy())
        return to_map(self, patch_scores)

    PatchCoreModel.to_map = keep_raw
    scored = score_samples(model, dataset.test, config.preprocessing(), with_masks=dataset.has_masks)
    metrics = compute_metrics(scored)
    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "raw.npy", np.concatenate(raw))
    np.save(out / "labels.npy", scored.labels)
    if args.dataset in BUILTIN:  # ELPV: keep each cell's rater probability for the breakdown
        np.save(out / "prob.npy", elpv_probabilities([s.path for s in dataset.test]))
    result = {key: metrics.get(key) for key in ("image_auroc", "pixel_auroc", "aupro")}
    result |= {"fit_s": round(fit_s, 1), "image_size": list(config.image_size), "bank": config.bank_size,
               "sigma": config.sigma, "args": vars(args),
               "rows_per_query": _rows_per_query(config, raw[0].shape[-2:])}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    print(args.dataset, json.dumps({k: v for k, v in result.items() if k != "args"}))


def _rows_per_query(config, grid: tuple[int, int]) -> float:
    """Mean bank rows each query patch is compared with (the kNN's cost per patch): the whole bank, or with region
    banks each region's rows weighted by its cells."""
    if config.regions <= 1:
        return float(config.bank_size)
    from edgeiad.models.patchcore.regions import layout

    regions = layout(*grid, config.regions, config.region_margin)
    cells = [(rows.stop - rows.start) * (cols.stop - cols.start) for rows, cols, _rw, _cw in regions]
    return sum(c * n for c, n in zip(cells, config.region_rows)) / sum(cells)


def _image_scores(folder: Path) -> dict[str, np.ndarray]:
    import torch

    from edgeiad.models._ops import GaussianBlur, map_score

    meta = json.loads((folder / "metrics.json").read_text())
    raw = torch.from_numpy(np.load(folder / "raw.npy")).unsqueeze(1)
    smooth = GaussianBlur(meta.get("sigma", 4.0)).upsampled(raw, tuple(meta["image_size"]))  # as the model maps
    # the model's own map-to-score function, so each share reads the pixels the exported graph reads
    top = {name: map_score(smooth, share).numpy() for name, share in SHARES.items()}
    return top | {"top 5 % − median": top["top 5 %"] - np.median(smooth.flatten(1).numpy(), axis=1)}


def elpv_probabilities(paths: list[str]) -> np.ndarray:
    """The rater probability of each built-in ELPV sample path ("elpv:images/cellNNNN.png")."""
    from edgeiad.data.elpv import _load_arrays

    _images, probs, _types, cells = _load_arrays()
    by_path = {"elpv:" + cell: prob for cell, prob in zip(cells, probs)}
    return np.array([by_path[path] for path in paths])


def level_aurocs(labels: np.ndarray, values: np.ndarray, prob: np.ndarray) -> dict[float, float]:
    """ELPV: the AUROC of the good cells against the cells of each rater probability (1/3, 2/3, 1)."""
    from edgeiad.metrics.image import roc_auc

    levels = {}
    for level in (1 / 3, 2 / 3, 1.0):
        keep = (prob == 0) | np.isclose(prob, level)
        levels[level] = roc_auc(labels[keep], values[keep])
    return levels


def scores(args) -> None:
    from edgeiad.metrics.image import roc_auc

    for run in args.runs:
        for folder in sorted(p for p in Path(run).iterdir() if (p / "raw.npy").is_file()):
            labels = np.load(folder / "labels.npy")
            prob = np.load(folder / "prob.npy") if (folder / "prob.npy").is_file() else None
            for name, values in _image_scores(folder).items():
                line = f"{run} {folder.name:12s} {name:18s} AUROC {roc_auc(labels, values):.4f}"
                if prob is not None:  # ELPV: good cells against each rater probability
                    for level, auroc in level_aurocs(labels, values, prob).items():
                        line += f"  p={level:.2f} {auroc:.4f}"
                print(line)


def study_parser(doc: str):
    """(parser, its subcommands, the `fit SET OUT [--threads N]` subcommand) that the offline studies share."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("fit")
    one.add_argument("dataset")
    one.add_argument("out")
    one.add_argument("--threads", type=int, default=1)
    return parser, sub, one


def main() -> None:
    parser, sub, one = study_parser(__doc__)
    one.add_argument("--set", action="append", default=[], help="PatchCoreConfig override, key=python literal")
    one.add_argument("--deep-weight", type=float, default=1.0, help="scale the deepest tapped block's features")
    one.add_argument("--stretch", action="store_true", help="per-image 1..99 percentile contrast stretch")
    one.add_argument("--bank-flips", action="store_true", help="add flipped (and, if square, transposed) views")
    many = sub.add_parser("scores")
    many.add_argument("runs", nargs="+")
    args = parser.parse_args()
    fit(args) if args.command == "fit" else scores(args)


if __name__ == "__main__":
    main()
