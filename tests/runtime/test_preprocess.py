"""Preprocessing choices the toolkit and the runtime share: how a frame is resized to the model input."""

from __future__ import annotations

import numpy as np
import pytest
from edgeiad_runtime.preprocess import INTERPOLATIONS, Preprocessing, preprocess


def _thin_lines() -> np.ndarray:
    """A white frame with 1-px dark lines every 4 px, both ways: what a 4x shrink must not lose."""
    frame = np.full((256, 256, 3), 255, dtype=np.uint8)
    frame[3::4, :] = 0
    frame[:, 0::4] = 0
    return frame


def test_antialias_keeps_thin_lines_that_bilinear_sampling_drops():
    frame = _thin_lines()
    linear = preprocess(frame, Preprocessing(64, 64, interpolation="linear"))
    antialias = preprocess(frame, Preprocessing(64, 64, interpolation="antialias"))
    area = preprocess(frame, Preprocessing(64, 64, interpolation="area"))
    np.testing.assert_array_equal(antialias, area)  # shrinking: pixel-area averaging
    # every output pixel averages a 4x4 block that holds 7 dark pixels: the lines' share of ink is kept
    assert np.allclose(antialias, ((255 * 9 / 16) - 127) / 128, atol=1 / 128)
    # bilinear reads the 2x2 taps at rows/columns 4i+1 and 4i+2, which miss the lines: they vanish
    assert np.allclose(linear, (255 - 127) / 128)


def test_antialias_enlarges_bilinearly():
    small = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for size in ((64, 64), (16, 64)):  # enlarging both ways, and one way only
        antialias = preprocess(small, Preprocessing(*size, interpolation="antialias"))
        np.testing.assert_array_equal(antialias, preprocess(small, Preprocessing(*size, interpolation="linear")))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_every_interpolation_round_trips_through_the_manifest_form(interpolation):
    spec = Preprocessing(32, 48, interpolation=interpolation)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
