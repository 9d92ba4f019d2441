"""`edgeiad study --setting supervised`: SegAD against its base detectors and a supervised classifier (seed 003).

Per dataset the base detectors are fitted once on a seeded half of the good training images (the paper's split);
their maps of the other half, of every test image and of disturbed copies of the other half are pooled and kept,
so each seed × shot count × configuration re-trains only the trees (seconds). For every seed and every number of
labelled defects per type (0 = synthetic disturbances, Appendix A.2), the labelled images are drawn from the test
set and every method is scored on the same remaining test images:
- each base detector alone (its own image score);
- SegAD over one base and over all bases, with each segmentation (one region, a 2×2 grid, k-means of features);
- a supervised classifier: logistic regression on globally pooled backbone features (seed 002's supervised
  branch, the paper's WRN row at edge scale), trained on the same images as the trees.
The unseen-defect experiment needs defect types; every dev-suite set has one, so the anomalous test images are
split at their median mask area into "small" and "large" defects, and each is held out in turn: labelled images
come from the other group only, and the scores are on good images plus the held-out group.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data import iter_batches, load_dataset, load_mask
from ..errors import DataError, require_torch
from ..metrics import image_metrics
from ..runs import versions, write_json

SEGMENTATIONS = ("single", "grid", "kmeans")
METRICS = ("image_auroc", "image_ap", "image_fpr_at_95tpr")


@dataclass
class Scored:
    """What the base detectors produced for one group of images, kept for every later configuration."""

    pooled: list = field(default_factory=list)  # N×K×h×w maps on the statistics grid
    clusters: list = field(default_factory=list)  # N×h×w k-means segment labels
    scores: list = field(default_factory=list)  # N×K base image scores
    pooled_features: list = field(default_factory=list)  # N×D pooled backbone features (supervised baseline)

    def finish(self) -> dict:
        torch = require_torch()
        return {
            "pooled": torch.cat(self.pooled),
            "clusters": torch.cat(self.clusters),
            "scores": np.concatenate(self.scores),
            "global": np.concatenate(self.pooled_features),
        }


def run_supervised_study(
    datasets: list[str],
    out: Path,
    bases: tuple[str, ...] = ("patchcore", "padim"),
    seeds: tuple[int, ...] = (0, 1, 2),
    shots: tuple[int, ...] = (0, 5, 10),
    echo=None,
    command: str = "",
) -> dict:
    """Run the study on every dataset (resuming finished ones from `out`/supervised.json); return the document."""
    echo = echo or (lambda message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "supervised.json"
    document = json.loads(path.read_text()) if path.is_file() else {"datasets": {}}
    document.update(
        {"command": command, "bases": list(bases), "seeds": list(seeds), "shots": list(shots), "versions": versions()}
    )
    for spec in datasets:
        dataset = load_dataset(spec)
        if dataset.name in document["datasets"]:
            echo(f"{dataset.name}: done before, kept")
            continue
        started = time.perf_counter()
        stored = out / "cache" / f"{dataset.name}-{'+'.join(bases)}.npz"
        if stored.is_file():
            echo(f"{dataset.name}: base detectors' outputs read from {stored}")
            cache = _read_cache(stored)
        else:
            echo(f"{dataset.name}: fitting {', '.join(bases)} on half the good images, scoring the rest")
            cache = _score_dataset(dataset, bases, echo)
            _write_cache(stored, cache)
            echo(f"{dataset.name}: base detectors done in {time.perf_counter() - started:.0f} s; training trees")
        document["datasets"][dataset.name] = _experiments(cache, bases, seeds, shots)
        document["datasets"][dataset.name]["prepare_s"] = round(time.perf_counter() - started, 1)
        write_json(path, document)
        (out / "supervised.md").write_text(markdown(document))
    (out / "supervised.md").write_text(markdown(document))
    return document


def _score_dataset(dataset, bases, echo) -> dict:
    """Fit the bases (seed 0 split) and keep pooled maps, k-means labels and scores of every image group."""
    torch = require_torch()
    from ..engine import _image_sizes
    from ..models import get_model
    from ..models.segad.fit import fit_bases, fit_segmentation, split_good, synthetic_defects

    config = get_model("segad").make_config(bases=tuple(bases), segmentation="kmeans")
    config.image_size = config.fitted_to(_image_sizes(dataset.train))
    config.validate()
    torch.manual_seed(0)
    preprocessing = config.preprocessing()
    base_rows, stage_rows = split_good(len(dataset.train), config)
    base_images = np.concatenate([a for a, _ in iter_batches([dataset.train[i] for i in base_rows], preprocessing)])
    model = fit_bases(config, base_images, "cpu")
    fit_segmentation(model, base_images)
    del base_images
    stage = [dataset.train[i] for i in stage_rows]
    groups = {"stage": _score(model, iter_batches(stage, preprocessing)), "test": None, "synthetic": None}
    groups["test"] = _score(model, iter_batches(dataset.test, preprocessing))

    def disturbed():
        for array, _ in iter_batches(stage, preprocessing):
            yield synthetic_defects(array, _one_copy(config)), None

    groups["synthetic"] = _score(model, disturbed())
    echo(f"    scored {len(stage)} stage-two good, {len(dataset.test)} test and {len(stage)} disturbed images")
    return {
        "name": dataset.name,
        "config": config,
        "grid": tuple(model.segment_labels.shape),
        "labels": np.array([s.label for s in dataset.test]),
        "types": [s.defect_type for s in dataset.test],
        "size_groups": _size_groups(dataset),
        **{name: scored.finish() for name, scored in groups.items()},
    }


GROUPS = ("stage", "test", "synthetic")


def _write_cache(path: Path, cache: dict) -> None:
    """The base detectors' outputs (npz, no pickle): re-running the tree experiments takes seconds."""
    from edgeiad_runtime.files import atomic_write

    arrays = {f"{group}.{key}": np.asarray(value) for group in GROUPS for key, value in cache[group].items()}
    arrays.update(labels=cache["labels"], types=np.array(cache["types"]), grid=np.array(cache["grid"]))
    arrays["size_groups"] = np.array(["" if g is None else g for g in cache["size_groups"]])
    arrays["config"] = np.array(json.dumps(cache["config"].to_dict()))
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, [buffer.getvalue()])


def _read_cache(path: Path) -> dict:
    from ..models.segad.torch_model import SegadConfig

    torch = require_torch()
    with np.load(path, allow_pickle=False) as data:
        cache = {
            group: {key: data[f"{group}.{key}"] for key in ("pooled", "clusters", "scores", "global")}
            for group in GROUPS
        }
        for group in GROUPS:
            for key in ("pooled", "clusters"):
                cache[group][key] = torch.from_numpy(cache[group][key])
        cache.update(
            labels=data["labels"],
            types=data["types"].tolist(),
            grid=tuple(int(v) for v in data["grid"]),
            size_groups=[g or None for g in data["size_groups"].tolist()],
            config=SegadConfig.from_dict(json.loads(str(data["config"]))),
        )
    return cache


def _one_copy(config):
    from dataclasses import replace

    return replace(config, synthetic_per_image=1)


def _score(model, batches) -> Scored:
    torch = require_torch()
    scored = Scored()
    with torch.no_grad():
        for array, _ in batches:
            batch = torch.from_numpy(np.ascontiguousarray(array))
            shared = model.shared_features(batch) if model.shared_backbone else None
            outputs = model.base_outputs(batch, shared)
            # The classifier's input: the first base's patch blocks, from the same backbone pass when it is shared.
            first = model.bases[0]
            features = first.feature_extractor(batch) if shared is None else model.own_features(first, shared)
            patch_blocks = set(getattr(first, "patch_layers", first.feature_extractor.layers))  # not PatchCore's coarse
            features = [f for f, block in zip(features, first.feature_extractor.layers) if block in patch_blocks]
            maps = torch.cat([m for m, _ in outputs], dim=1)
            scored.pooled.append(torch.nn.functional.avg_pool2d(maps, model.config.pool))
            scored.clusters.append(model.segments_of(batch))
            scored.scores.append(torch.stack([s for _, s in outputs], dim=1).numpy())
            scored.pooled_features.append(
                torch.cat([torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1) for f in features], 1).numpy()
            )
    return scored


def _size_groups(dataset) -> list[str | None]:
    """'small' / 'large' for anomalous test images with masks (split at the median mask area), else None."""
    from ..data import load_rgb

    areas = {}
    for index, sample in enumerate(dataset.test):
        if sample.label != 0 and sample.mask_path is not None:
            shape = load_rgb(sample).shape[:2]
            areas[index] = float(load_mask(sample, shape).mean())
    if len(areas) < 8:
        return [None] * len(dataset.test)
    median = float(np.median(list(areas.values())))
    return [None if i not in areas else ("small" if areas[i] <= median else "large") for i in range(len(dataset.test))]


def _features(cache: dict, group: str, base_index: list[int], segmentation: str, scores: bool):
    from ..models.segad.fit import grid_labels
    from ..models.segad.torch_model import segment_statistics

    torch = require_torch()
    data = cache[group]
    pooled = data["pooled"][:, base_index]
    count = len(pooled)
    if segmentation == "single":
        labels, segments = torch.zeros(count, *cache["grid"], dtype=torch.long), 1
    elif segmentation == "grid":
        labels, segments = grid_labels(cache["grid"], (2, 2)).expand(count, *cache["grid"]), 4
    else:
        labels, segments = data["clusters"], cache["config"].segments
    with torch.no_grad():
        found = segment_statistics(pooled, labels, segments, cache["config"].quantile).numpy()
    return np.concatenate([found, data["scores"][:, base_index]], axis=1) if scores else found


# (base image scores as features, balanced classes, prior weight): the paper's forest, and edgeiad's defaults.
VARIANTS = {"paper": (False, False, 0.0), "edgeiad": (True, True, 1.0)}


def _methods(bases: tuple[str, ...]) -> list[tuple[str, list[int], str, str]]:
    """(row name, base indices, segmentation, variant) for every SegAD configuration of the study.

    "paper": the paper's features and trees as published; "edgeiad": the defaults, which add each base's image
    score to the features, weight the defective images up to the good ones' total and boost from the first base's
    standardised score.
    """
    sets = [[0]] + ([list(range(len(bases)))] if len(bases) > 1 else [])
    return [
        (f"segad[{'+'.join(bases[i] for i in chosen)}] {segmentation}, {variant}", chosen, segmentation, variant)
        for variant in VARIANTS
        for chosen in sets
        for segmentation in SEGMENTATIONS
    ]


def _experiments(cache: dict, bases, seeds, shots) -> dict:
    config = cache["config"]
    labels, types = cache["labels"], cache["types"]
    anomalous = np.flatnonzero(labels != 0)
    features = {
        (name, group): _features(cache, group, chosen, segmentation, VARIANTS[variant][0])
        for name, chosen, segmentation, variant in _methods(bases)
        for group in GROUPS
    }
    configs = {
        variant: replace(config, image_scores=scores, balance=balance, prior_weight=weight)
        for variant, (scores, balance, weight) in VARIANTS.items()
    }
    rows: dict[str, dict[str, list]] = {}
    unseen: dict[str, dict[str, list]] = {}

    def record(table, setting, method, values):
        table.setdefault(setting, {}).setdefault(method, []).append(values)

    for seed in seeds:
        for shot in shots:
            setting = "synthetic" if shot == 0 else f"{shot} labelled"
            chosen = [] if shot == 0 else _labelled(anomalous, types, shot, seed)
            evaluate = np.setdiff1d(np.arange(len(labels)), chosen)
            for index, name in enumerate(bases):
                record(rows, setting, name, _metrics(labels[evaluate], cache["test"]["scores"][evaluate, index]))
            for name, _chosen, _segmentation, variant in _methods(bases):
                found = _trees(cache, features, name, replace(configs[variant], seed=seed), chosen, shot, evaluate)
                record(rows, setting, name, _metrics(labels[evaluate], found))
            if shot:
                found = _logistic(cache, chosen, evaluate, seed)
                record(rows, setting, "supervised classifier", _metrics(labels[evaluate], found))
        for held in ("small", "large"):
            groups = cache["size_groups"]
            seen = np.array([i for i in anomalous if groups[i] not in (None, held)])
            target = np.array([i for i in anomalous if groups[i] == held])
            if len(seen) < 4 or len(target) < 2:
                continue
            chosen = np.sort(np.random.default_rng(seed).choice(seen, size=min(10, len(seen) // 2), replace=False))
            test = np.concatenate([np.flatnonzero(labels == 0), target])
            setting = f"{held} held out"
            record(unseen, setting, bases[0], _metrics(labels[test], cache["test"]["scores"][test, 0]))
            for name, _chosen, segmentation, variant in _methods(bases):
                if segmentation != "kmeans":
                    continue
                found = _trees(cache, features, name, replace(configs[variant], seed=seed), chosen, 10, test)
                record(unseen, setting, name, _metrics(labels[test], found))
            found = _logistic(cache, chosen, test, seed)
            record(unseen, setting, "supervised classifier", _metrics(labels[test], found))
    return {
        "tree_parity": dict(PARITY),  # cumulative over the datasets run so far in this process
        "image_size": list(config.image_size),
        "segments_kmeans": config.segments,
        "n_test": int(len(labels)),
        "n_stage_good": int(len(cache["stage"]["scores"])),
        "table": _summarise(rows),
        "unseen": _summarise(unseen),
    }


def _labelled(anomalous: np.ndarray, types: list[str], shot: int, seed: int) -> np.ndarray:
    """`shot` anomalous test indices per defect type, seeded: the rule `--labelled-defects` applies."""
    from ..data.loader import labelled_indices

    labels = np.zeros(len(types), dtype=int)
    labels[anomalous] = 1
    return np.array(labelled_indices(labels, types, shot, seed), dtype=int)


def _trees(cache: dict, features: dict, name: str, config, chosen, shot: int, rows) -> np.ndarray:
    """Train the trees on stage-two good + labelled (or disturbed) images, as fit_segad does; margins of `rows`."""
    from ..models.segad.fit import fit_trees, prior_margins, prior_statistics

    good = features[(name, "stage")]
    bad = features[(name, "synthetic")] if shot == 0 else features[(name, "test")][chosen]
    x, y = np.concatenate([good, bad]), np.concatenate([np.zeros(len(good)), np.ones(len(bad))])
    base = cache["stage"]["scores"][:, 0]
    bad_base = cache["synthetic"]["scores"][:, 0] if shot == 0 else cache["test"]["scores"][chosen, 0]
    prior = prior_statistics(base)
    booster = fit_trees(config, x, y, prior_margins(config, prior, np.concatenate([base, bad_base])))
    test_prior = prior_margins(config, prior, cache["test"]["scores"][rows, 0])
    return _margin(booster, features[(name, "test")][rows], test_prior)


PARITY = {
    "max_abs": 0.0,
    "max_rel": 0.0,
    "rows": 0,
}  # graph-form trees against xgboost, over every scored test set of the study


def _margin(booster, x: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """xgboost's margin, checked against the complete-tree arrays the exported graph evaluates (the prior replaces
    xgboost's base score, as in SegadModel)."""
    import xgboost

    from ..models.segad.trees import booster_arrays, margin

    expected = booster.predict(xgboost.DMatrix(x.astype(np.float32), base_margin=prior), output_margin=True)
    depth = int(json.loads(booster.save_config())["learner"]["gradient_booster"]["tree_train_param"]["max_depth"])
    arrays = booster_arrays(booster, depth)
    found = margin(x, **arrays) if prior is None else margin(x, **{**arrays, "base": 0.0}) + prior
    error = np.abs(found - expected)
    PARITY["max_abs"] = max(PARITY["max_abs"], float(np.max(error)))
    PARITY["max_rel"] = max(PARITY["max_rel"], float(np.max(error / (1.0 + np.abs(expected)))))
    PARITY["rows"] += len(x)
    return expected


def _logistic(cache: dict, chosen, evaluate, seed: int) -> np.ndarray:
    """Class-balanced, L2-regularised logistic regression on standardised pooled backbone features."""
    torch = require_torch()
    good = cache["stage"]["global"]
    x = np.concatenate([good, cache["test"]["global"][chosen]])
    y = np.concatenate([np.zeros(len(good)), np.ones(len(chosen))])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.from_numpy((x - mean) / std).double()
    target = torch.from_numpy(y).double()
    weight = torch.where(target > 0, 0.5 / target.mean(), 0.5 / (1 - target.mean()))
    torch.manual_seed(seed)
    coef = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef, bias], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        logits = inputs @ coef + bias
        value = (weight * torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()
        value = value + 1e-2 * (coef * coef).sum()
        value.backward()
        return value

    optimizer.step(loss)
    test = torch.from_numpy((cache["test"]["global"][evaluate] - mean) / std).double()
    with torch.no_grad():
        return (test @ coef + bias).numpy()


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    if len(set(labels.tolist())) < 2:
        raise DataError("a study split lost one class: use a dataset with more good and anomalous test images")
    found = image_metrics(labels, scores)
    return {key: float(found[key]) for key in METRICS}


def _summarise(table: dict) -> dict:
    return {
        setting: {
            method: {
                key: {"mean": float(np.mean([r[key] for r in runs])), "std": float(np.std([r[key] for r in runs]))}
                for key in METRICS
            }
            | {"runs": len(runs)}
            for method, runs in methods.items()
        }
        for setting, methods in table.items()
    }


def markdown(document: dict) -> str:
    """Mean over datasets first, then one table per dataset and setting (mean ± std over seeds), then the
    unseen-defect tables."""
    lines = [
        "# SegAD study (seed 003)",
        "",
        f"`{document.get('command', '')}`; bases {', '.join(document['bases'])}; seeds {document['seeds']}.",
        "",
    ]
    results = document["datasets"]
    if len(results) > 1:
        lines += [f"## Mean over {len(results)} datasets ({', '.join(results)})", ""]
        for part, title in (("table", ""), ("unseen", "unseen defects: ")):
            settings = {setting: None for result in results.values() for setting in result[part]}
            for setting in settings:
                shared = [r[part][setting] for r in results.values() if setting in r[part]]
                methods = {m: None for table in shared for m in table}
                lines += [f"**{title}{setting}** ({len(shared)} datasets)", "", _header(), "|---|---|---|---|"]
                for method in methods:
                    rows = [table[method] for table in shared if method in table]
                    cells = [f"{np.mean([row[k]['mean'] for row in rows]):.3f}" for k in METRICS]
                    lines.append(f"| {method} | {' | '.join(cells)} |")
                lines.append("")
    for name, result in results.items():
        lines += [f"## {name} ({result['n_test']} test images, {result['n_stage_good']} stage-two good)", ""]
        parity = result.get("tree_parity")
        if parity:
            lines += [f"Graph-form trees vs xgboost: max |margin difference| {parity['max_abs']:.2g} (relative "
                      f"{parity.get('max_rel', 0):.2g}) over {parity['rows']} scored rows.", ""]  # fmt: skip
        for title, table in (("", result["table"]), ("unseen defects: ", result["unseen"])):
            for setting, methods in table.items():
                lines += [f"**{title}{setting}**", "", _header(), "|---|---|---|---|"]
                for method, values in methods.items():
                    cells = [f"{values[k]['mean']:.3f} ± {values[k]['std']:.3f}" for k in METRICS]
                    lines.append(f"| {method} | {' | '.join(cells)} |")
                lines.append("")
    return "\n".join(lines) + "\n"


def _header() -> str:
    return "| method | image AUROC | AP | FPR@95TPR |"
