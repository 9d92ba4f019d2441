"""Fit SegAD as the paper does (§4.1): good images split in two, the base detectors on one part, the boosted
random forest on the per-segment statistics of the other part plus the labelled defective images.

Without labelled defects, disturbed copies of the stage-two good images stand in (Appendix A.2: a blurred region
or a thin rectangle of a random gray), and the fit info says so.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...errors import ConfigError, DataError, require, require_torch
from .._fitting import Stopwatch
from .torch_model import SegadConfig, SegadModel
from .trees import booster_arrays

torch = require_torch()

KMEANS_POSITIONS = 20000  # feature positions k-means clusters (sampled evenly over the base images)
KMEANS_ITERATIONS = 30
PARITY_TOLERANCE = 1e-3  # |graph margin − xgboost margin|, relative to the margins' scale


def fit_segad(config: SegadConfig, batches: Iterable, device: str = "cpu", progress=None, anomalous=None):
    """Return (fitted SegadModel on the CPU, info). `anomalous`: batches of labelled defective images, or None."""
    watch = Stopwatch()
    if config.segmentation == "labels":
        _label_values(config)  # an unreadable label map fails now, not after the base detectors' fit
    images = _stack(batches)
    base_rows, stage_rows = split_good(len(images), config)
    with watch.time("bases_s"):
        model = fit_bases(config, images[base_rows], device)
    with watch.time("segmentation_s"):
        fit_segmentation(model, images[base_rows])
    with watch.time("features_s"):
        good, good_scores = stage_features(model, images[stage_rows])
        bad_images = _stack(anomalous) if anomalous is not None else np.zeros((0, *images.shape[1:]), np.float32)
        source = "labelled" if len(bad_images) else "synthetic"
        if source == "synthetic":
            bad_images = synthetic_defects(images[stage_rows], config)
        bad, bad_scores = stage_features(model, bad_images)
    x = np.concatenate([good, bad])
    y = np.concatenate([np.zeros(len(good)), np.ones(len(bad))])
    model.prior.copy_(torch.tensor(prior_statistics(good_scores[:, 0])))
    scores = np.concatenate([good_scores[:, 0], bad_scores[:, 0]])
    with watch.time("trees_s"):
        prior = prior_margins(config, model.prior.numpy(), scores)
        booster = fit_trees(config, x, y, prior)
        parity = install_trees(model, booster, x, scores)
    if progress is not None:
        progress(1, 1)
    info = {
        "n_base_images": len(base_rows),
        "n_stage_good": len(good),
        "n_stage_defective": len(bad),
        "defects": source,
        "segments": config.segments,
        "n_features": config.n_features,
        "tree_parity_max_abs": parity,
        **watch.timings,
    }
    return model.eval(), info


def _stack(batches: Iterable) -> np.ndarray:
    arrays = [np.asarray(array, np.float32) for array, _samples in batches]
    return np.concatenate(arrays) if arrays else np.zeros((0, 3, 1, 1), np.float32)


def split_good(count: int, config: SegadConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (base rows, stage-two rows) of the good images; each part gets what its fits need."""
    from .. import get_model

    need = max(get_model(name).min_train_images for name in config.bases)
    if count < need + 2:
        raise DataError(
            f"segad needs at least {need + 2} good training images ({need} for its base detectors, 2 for the "
            f"second stage), found {count}: add good images"
        )
    size = min(max(need, round(count * config.base_share)), count - 2)
    order = np.random.default_rng(config.seed).permutation(count)
    return np.sort(order[:size]), np.sort(order[size:])


def _batches(images: np.ndarray, size: int = 16):
    for start in range(0, len(images), size):
        yield images[start : start + size], None


def fit_bases(config: SegadConfig, images: np.ndarray, device: str = "cpu") -> SegadModel:
    """Fit each base detector on `images`; return a SegadModel holding them (trees and segmentation empty)."""
    from .. import get_model

    fitted, configs = [], []
    for index, name in enumerate(config.bases):
        base_config = config.base_config(index)
        base_config.validate()
        model, _info = get_model(name).fit()(base_config, _batches(images), device=device)
        fitted.append(model)
        configs.append(model.config.to_dict())
    config.base_configs = configs
    if config.segmentation == "single":
        config.segments = 1
    elif config.segmentation == "grid":
        config.segments = config.grid[0] * config.grid[1]
    elif config.segmentation == "labels":
        config.segments = len(_label_values(config))
    model = SegadModel(config)
    for target, source in zip(model.bases, fitted):
        target.load_state_dict(source.state_dict())
    return model.eval()


def fit_segmentation(model: SegadModel, images: np.ndarray) -> None:
    """Static labels (single, grid, a label image) or k-means centroids of good images' early features."""
    config = model.config
    height, width = model.segment_labels.shape
    if config.segmentation == "grid":
        model.segment_labels.copy_(grid_labels((height, width), config.grid))
    elif config.segmentation == "labels":
        model.segment_labels.copy_(torch.from_numpy(label_grid(config, (height, width))))
    elif config.segmentation == "kmeans":
        with torch.no_grad():
            features = torch.cat([model.feature_extractor(torch.from_numpy(chunk))[0] for chunk, _ in _batches(images)])
        points = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        picks = torch.linspace(0, len(points) - 1, min(KMEANS_POSITIONS, len(points))).long()
        model.centroids.copy_(kmeans(points[picks].double(), config.segments, config.seed).float())


def grid_labels(shape: tuple[int, int], grid) -> torch.Tensor:
    """Row-major cell index of every position of a `shape` grid cut into grid[0] × grid[1] equal cells."""
    rows, cols = grid
    row = (torch.arange(shape[0]) * rows // shape[0]).view(-1, 1)
    col = (torch.arange(shape[1]) * cols // shape[1]).view(1, -1)
    return row * cols + col


def _label_values(config: SegadConfig) -> list[int]:
    return np.unique(_read_labels(config)).tolist()


def _read_labels(config: SegadConfig) -> np.ndarray:
    from edgeiad_runtime.preprocess import read_image

    try:
        image = read_image(config.label_map)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one message
        raise DataError(f"label map {config.label_map} cannot be read ({exc}): pass a PNG of segment values") from None
    labels = image[..., 0]
    if np.unique(labels).size > 64:
        raise DataError(f"label map {config.label_map} has more than 64 distinct values: use one gray level a segment")
    return labels


def label_grid(config: SegadConfig, shape: tuple[int, int]) -> np.ndarray:
    """The user's label image as segment indices 0..L-1 on the statistics grid (nearest-neighbour resize)."""
    import cv2

    labels = _read_labels(config)
    values = np.unique(labels)
    if values.size != config.segments:
        raise DataError(f"label map {config.label_map} has {values.size} values, the run expects {config.segments}")
    index = np.searchsorted(values, labels).astype(np.uint8)
    return cv2.resize(index, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def kmeans(points, clusters: int, seed: int):
    """k-means++ seeded centroids refined by Lloyd iterations; an emptied cluster restarts at the worst-fit point."""
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centroids) < clusters:
        nearest = torch.cdist(points, centroids).min(dim=1).values ** 2
        weights = nearest / nearest.sum() if nearest.sum() > 0 else torch.ones_like(nearest)
        centroids = torch.cat([centroids, points[torch.multinomial(weights, 1, generator=generator)]])
    for _ in range(KMEANS_ITERATIONS):
        distances = torch.cdist(points, centroids)
        assigned = distances.argmin(dim=1)
        for cluster in range(clusters):
            members = points[assigned == cluster]
            if len(members):
                centroids[cluster] = members.mean(dim=0)
            else:
                centroids[cluster] = points[distances.min(dim=1).values.argmax()]
    return centroids


@torch.no_grad()
def stage_features(model: SegadModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N×F float32 statistics of the base maps: the trees' input, N×K base image scores) of preprocessed images."""
    rows, scores = [], []
    for chunk, _ in _batches(images):
        batch = torch.from_numpy(np.ascontiguousarray(chunk))
        outputs = model.base_outputs(batch)
        rows.append(model.features(batch, outputs).float().numpy())
        scores.append(torch.stack([score for _, score in outputs], dim=1).float().numpy())
    if not rows:
        return np.zeros((0, model.config.n_features), np.float32), np.zeros((0, len(model.bases)), np.float32)
    return np.concatenate(rows), np.concatenate(scores)


def prior_statistics(good_scores: np.ndarray) -> list[float]:
    """Mean and standard deviation of the first base's image scores on the stage-two good images."""
    scale = float(np.std(good_scores))
    return [float(np.mean(good_scores)), scale if scale > 1e-12 else 1.0]


def prior_margins(config: SegadConfig, prior: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """The base margins the trees boost from (float32, as the graph computes them), or None without a prior."""
    if not config.prior_weight:
        return None
    scores = np.asarray(scores, np.float32)
    return (np.float32(config.prior_weight) * (scores - np.float32(prior[0])) / np.float32(prior[1])).astype(np.float32)


def synthetic_defects(images: np.ndarray, config: SegadConfig) -> np.ndarray:
    """`synthetic_per_image` disturbed copies of each preprocessed image (paper, Appendix A.2)."""
    from ..backbones import get_backbone

    spec = get_backbone(config.backbone)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    from ..attribution.synthetic import from_uint8, to_uint8

    rng = np.random.default_rng(config.seed + 1)
    pixels = to_uint8(images, mean, std)
    copies = [disturb(pixels[i], rng) for _ in range(config.synthetic_per_image) for i in range(len(pixels))]
    return from_uint8(np.stack(copies), mean, std) if copies else images[:0]


def disturb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A blurred random region, or a thin rectangle of a random gray, on a copy of an HxWx3 uint8 image."""
    import cv2

    height, width = image.shape[:2]
    out = image.copy()
    if rng.random() < 0.5:
        h, w = (int(rng.integers(max(4, n // 10), max(5, n // 3))) for n in (height, width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        region = np.ascontiguousarray(out[top : top + h, left : left + w])
        out[top : top + h, left : left + w] = cv2.GaussianBlur(region, (0, 0), float(rng.uniform(2.0, 5.0)))
        return out
    long_side, thin = (
        int(rng.integers(max(4, min(height, width) // 8), max(5, min(height, width) // 2))),
        int(rng.integers(1, max(2, min(height, width) // 40) + 1)),
    )
    h, w = (long_side, thin) if rng.random() < 0.5 else (thin, long_side)
    h, w = min(h, height), min(w, width)
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    out[top : top + h, left : left + w] = int(rng.integers(0, 256))
    return out


def fit_trees(config: SegadConfig, x: np.ndarray, y: np.ndarray, prior: np.ndarray | None = None):
    """The paper's Boosted Random Forest (Appendix A.1) with xgboost: rounds × parallel trees, binary:logitraw;
    boosting from `prior` (per-row margins) when given."""
    xgboost = require("xgboost", "train")
    if len(set(y.tolist())) < 2:
        raise ConfigError("the second stage needs good and defective images to train on")
    params = {
        "objective": "binary:logitraw",
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
        "num_parallel_tree": config.parallel_trees,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample,
        "colsample_bynode": config.colsample,
        "reg_alpha": config.l1,
        "tree_method": "hist",
        "seed": config.seed,
        "nthread": max(1, torch.get_num_threads()),
    }
    if config.balance:  # the defective images weigh as much as the good ones together
        params["scale_pos_weight"] = float((y == 0).sum()) / float(max(1, (y != 0).sum()))
    matrix = xgboost.DMatrix(x.astype(np.float32), label=y, base_margin=prior)
    return xgboost.train(params, matrix, num_boost_round=config.rounds)


def install_trees(model: SegadModel, booster, x: np.ndarray, scores: np.ndarray) -> float:
    """Copy the booster into the model's tree buffers; return max |graph − xgboost| margin on `x` with the first
    base's image `scores` (raises above tolerance: the graph must score exactly what xgboost trained)."""
    xgboost = require("xgboost", "train")
    arrays = booster_arrays(booster, model.config.max_depth)
    if arrays["features"].shape != tuple(model.tree_features.shape):
        raise ConfigError(
            f"xgboost returned {arrays['features'].shape[0]} trees, the config expects {model.tree_features.shape[0]}"
        )
    model.tree_features.copy_(torch.from_numpy(arrays["features"]))
    model.tree_thresholds.copy_(torch.from_numpy(arrays["thresholds"]))
    model.tree_leaves.copy_(torch.from_numpy(arrays["leaves"].reshape(-1)))
    prior = prior_margins(model.config, model.prior.numpy(), scores)
    # xgboost adds its base_score only when no base margin is given: boosting from the prior replaces it.
    model.tree_base.fill_(0.0 if prior is not None else float(arrays["base"]))
    expected = booster.predict(xgboost.DMatrix(x.astype(np.float32), base_margin=prior), output_margin=True)
    with torch.no_grad():
        found = model.score(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)))
    found = found.numpy()
    error = float(np.max(np.abs(found - expected))) if len(x) else 0.0
    if error > PARITY_TOLERANCE * (1.0 + float(np.max(np.abs(expected)))):
        raise ConfigError(f"the graph's trees differ from xgboost by {error:.3g}: report this as a bug")
    return error
