"""xgboost's trees as dense, complete binary trees: arrays a graph evaluates with Gather and Less, no ONNX-ML.

A tree of depth D becomes `features` and `thresholds` for its 2^D - 1 internal nodes (level by level, the node
at level d and position p is index 2^d - 1 + p, its children positions 2p and 2p + 1) and `leaves` for its 2^D
leaves. A leaf xgboost reached above depth D keeps splitting on feature 0 at +inf (always left, as x < inf) and
its value fills every leaf below it. The margin is `base + sum of the leaves reached` (binary:logitraw), which is
what `Booster.predict(output_margin=True)` returns. Features are finite by construction (empty segments give 0),
so xgboost's missing-value directions never apply. numpy only: the runtime can read these arrays too.
"""

from __future__ import annotations

import json

import numpy as np

from ...errors import ArtifactError


def booster_arrays(booster, depth: int) -> dict[str, np.ndarray]:
    """{features T×(2^D-1) int64, thresholds float32, leaves T×2^D float32, base ()} from an xgboost Booster."""
    model = json.loads(booster.save_raw(raw_format="json"))
    learner = model["learner"]
    objective = learner.get("objective", {}).get("name")
    if objective != "binary:logitraw":
        raise ArtifactError(f"SegAD's trees need the binary:logitraw objective, the booster uses {objective!r}")
    base = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
    trees = learner["gradient_booster"]["model"]["trees"]
    internal, leaves = 2**depth - 1, 2**depth
    features = np.zeros((len(trees), internal), np.int64)
    thresholds = np.full((len(trees), internal), np.inf, np.float32)
    values = np.zeros((len(trees), leaves), np.float32)
    for index, tree in enumerate(trees):
        _fill(tree, 0, 0, 0, depth, features[index], thresholds[index], values[index])
    return {"features": features, "thresholds": thresholds, "leaves": values, "base": np.float32(base)}


def _fill(tree: dict, node: int, level: int, position: int, depth: int, features, thresholds, values) -> None:
    left, right = tree["left_children"][node], tree["right_children"][node]
    if left == -1:  # a leaf: its value covers every leaf position below it
        span = 2 ** (depth - level)
        values[position * span : (position + 1) * span] = tree["split_conditions"][node]
        return
    if level >= depth:
        raise ArtifactError(f"an xgboost tree is deeper than max_depth {depth}: retrain the second stage")
    slot = 2**level - 1 + position
    features[slot] = tree["split_indices"][node]
    thresholds[slot] = np.float32(tree["split_conditions"][node])
    _fill(tree, left, level + 1, 2 * position, depth, features, thresholds, values)
    _fill(tree, right, level + 1, 2 * position + 1, depth, features, thresholds, values)


def margin(x: np.ndarray, features: np.ndarray, thresholds: np.ndarray, leaves: np.ndarray, base) -> np.ndarray:
    """The ensemble's raw margin for N×F float32 features (numpy reference of the graph's evaluation)."""
    x = np.asarray(x, np.float32)
    depth = int(np.log2(leaves.shape[1]))
    position = np.zeros((x.shape[0], features.shape[0]), np.int64)
    trees = np.arange(features.shape[0])
    for level in range(depth):
        slot = 2**level - 1 + position
        feature = features[trees, slot]
        right = x[np.arange(x.shape[0])[:, None], feature] >= thresholds[trees, slot]
        position = 2 * position + right
    return leaves[trees, position].sum(axis=1, dtype=np.float64).astype(np.float32) + np.float32(base)
