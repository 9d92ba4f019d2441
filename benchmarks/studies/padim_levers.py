"""Offline PaDiM lever study (#14): channel count and image-score share from one feature pass per set.

PaDiM keeps a seeded random subset of `n_features` of the backbone's channels (`random_channels`). Every subset is a
row selection of the full embedding, so one pass over the training and test images with all channels serves every
`n_features`: per count the Gaussians are fitted on the selected rows exactly as `fit_padim` fits them, the test
maps are computed and smoothed as the model does, and each image-score share (read every `--strides` pixel, as
`score_stride` reads it) scores the same maps. Prints one line
per (count, share) with image AUROC, and pixel AUROC / AUPRO@0.3 per count; writes `metrics.json` and the raw
patch scores per count under OUT/SET.

    python benchmarks/studies/padim_levers.py elpv-mono study/padim --counts 50,100,152

SET is elpv-mono, elpv-poly, a dev set name (bsdata, bsdata-full, deeppcb, cfd under ../shared/data) or a folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from patchcore_levers import SHARES, setup  # same folder; run as a script


def run(args) -> None:
    import torch

    from edgeiad.engine import _image_sizes, compute_metrics, iter_batches, score_with
    from edgeiad.models._fitting import collect_embeddings, seed_everything
    from edgeiad.models._ops import GaussianBlur, map_score
    from edgeiad.models.padim.fit import gaussian_statistics
    from edgeiad.models.padim.torch_model import PadimConfig, PadimModel, mahalanobis_distances, random_channels

    overrides, dataset = setup(args)
    probe = PadimConfig(**overrides)
    probe.image_size = probe.fitted_to(_image_sizes(dataset.train))
    total = sum(PadimModel(probe).feature_extractor.channels())
    counts = [total if c == "all" else int(c) for c in args.counts.split(",")]
    strides = [int(s) for s in args.strides.split(",")]
    config = PadimConfig(**{**overrides, "n_features": total})  # every channel, in channel order
    config.image_size = probe.image_size
    config.validate()
    seed_everything(config.seed)
    model = PadimModel(config).eval()
    assert torch.equal(model.channel_index, torch.arange(total))
    started = time.perf_counter()
    with torch.no_grad():
        train = collect_embeddings(model.embed, iter_batches(dataset.train, config.preprocessing()), "cpu")
    embed_s = time.perf_counter() - started
    index = {n: random_channels(total, n, config.seed) for n in counts}
    stats, stats_s = {}, {}
    for n in counts:  # fit_padim's statistics on the rows PaDiM(n_features=n) keeps
        started = time.perf_counter()
        mean, inverse = gaussian_statistics(train.index_select(1, index[n]), config.regularization)
        stats[n] = (mean.float(), inverse.float())
        stats_s[n] = round(time.perf_counter() - started, 1)
    del train
    raw = {n: [] for n in counts}

    def infer(batch: np.ndarray):
        with torch.no_grad():
            embedding = model.embed(torch.from_numpy(batch))
            for n in counts:
                raw[n].append(mahalanobis_distances(embedding.index_select(1, index[n]), *stats[n])[:, 0].numpy())
        return np.zeros((batch.shape[0], *config.image_size), np.float32), np.zeros(batch.shape[0], np.float32)

    scored = score_with(infer, dataset.test, config.preprocessing(), with_masks=dataset.has_masks)
    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", scored.labels)
    blur = GaussianBlur(config.sigma)
    result = {"image_size": list(config.image_size), "embed_train_s": round(embed_s, 1), "counts": {}}
    for n in counts:
        patch = np.concatenate(raw[n])
        np.save(out / f"raw-{n}.npy", patch)
        smooth = blur.upsampled(torch.from_numpy(patch).unsqueeze(1), tuple(config.image_size))
        row = {"statistics_s": stats_s[n], "image_auroc": {}}
        for stride in strides:
            for name, share in SHARES.items():
                scored.scores = map_score(smooth, share, stride).numpy()
                key = name if stride == 1 else f"{name}, stride {stride}"
                row["image_auroc"][key] = round(float(compute_metrics(scored)["image_auroc"]), 4)
        if dataset.has_masks:
            scored.maps = list(smooth[:, 0].numpy())
            metrics = compute_metrics(scored)
            row |= {key: round(float(metrics[key]), 4) for key in ("pixel_auroc", "aupro")}
        del smooth
        result["counts"][str(n)] = row
        print(args.dataset, n, json.dumps(row), flush=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("--counts", default="50,100,all", help="comma list of n_features (all = every channel)")
    parser.add_argument("--strides", default="1", help="comma list of score_stride values each share is read at")
    parser.add_argument("--set", action="append", default=[], help="PadimConfig override, key=python literal")
    parser.add_argument("--threads", type=int, default=2)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
