"""Run overlays show the threshold, the ground truth and a colour bar, and include the worst misses."""

from __future__ import annotations

import numpy as np
from edgeiad_runtime.postprocess import annotated_overlay, outline

from edgeiad.engine import Scored, overlay_choice


def test_the_choice_covers_false_alarms_worst_misses_and_the_clearest_hit():
    scores = np.array([0.1, 0.9, 0.3, 0.2, 5.0, 0.05, 3.0, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    chosen = overlay_choice(Scored(scores=scores, labels=labels, defect_types=[""] * 8))
    assert chosen == [(1, "good"), (2, "good"), (3, "good"), (5, "missed"), (7, "missed"), (4, "anomalous")]


def test_overlay_draws_contour_truth_outline_and_colour_bar():
    frame = np.zeros((60, 80, 3), np.uint8)
    unit = np.zeros((15, 20), np.float32)
    unit[5:10, 5:10] = 1.0
    truth = np.zeros((60, 80), bool)
    truth[40:50, 50:70] = True
    image = annotated_overlay(frame, unit, threshold=0.5, truth=truth)
    assert image.shape[0] == 60 and image.shape[1] > 80  # the colour bar sits to the right
    white = np.all(image[:, :80] == 255, axis=2)
    green = np.all(image[:, :80] == (0, 200, 0), axis=2)
    assert white[15:45, 15:45].any() and not white[50:, :].any()  # contour around the hot square only
    assert green[40, 50:70].all() and not green[45, 55:65].any()  # an outline, not a filled mask
    bar = image[:, -1]
    assert (bar[0] != bar[-1]).any() and np.all(image[29:31, -1] == 255)  # hot at the top, tick at 0.5
    assert outline(np.ones((4, 4), bool)).sum() == 12
