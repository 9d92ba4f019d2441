"""Bad inputs raise one-line ValueError/FileNotFoundError subclasses and never crash the process."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from edgeiad_runtime.errors import DataError, DataNotFoundError, EdgeiadError
from edgeiad_runtime.preprocess import MAX_SIDE
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

BAD_ARRAYS = {
    "none": (None, "is None"),
    "complex": (np.zeros((8, 8, 3), np.complex64), "dtype complex64"),
    "object": (np.full((8, 8), object()), "dtype object"),
    "five_channels": (np.zeros((8, 8, 5), np.uint8), "shape (8, 8, 5)"),
    "two_channels": (np.zeros((8, 8, 2), np.uint8), "shape (8, 8, 2)"),
    "empty": (np.zeros((0, 0), np.uint8), "too small"),
    "empty_rgb": (np.zeros((0, 7, 3), np.uint8), "too small"),
    "no_channels": (np.zeros((7, 7, 0), np.uint8), "shape (7, 7, 0)"),
    "nan": (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    "inf": (np.full((8, 8), np.inf, np.float64), "NaN or infinite"),
    "one_pixel": (np.zeros((1, 1, 3), np.uint8), "1x1 pixels: too small"),
    "one_d": (np.zeros(12, np.uint8), "shape (12,)"),
    "four_d": (np.zeros((1, 8, 8, 3), np.uint8), "shape (1, 8, 8, 3)"),
    "negative_int": (np.full((8, 8), -3, np.int16), "outside 0..255"),
    "float_range": (np.full((8, 8), 300.0, np.float32), "expected [0, 1] or [0, 255]"),
    "too_large": (np.zeros((MAX_SIDE + 1, 2), np.uint8), f"larger than {MAX_SIDE}"),
    "list": ([[0, 1], [2, 3]], "is a list"),
    "bytes": (b"\x89PNG", "is a bytes"),
}


def _assert_one_line(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_bad_arrays_raise_data_error(detector, name):
    value, needle = BAD_ARRAYS[name]
    with pytest.raises(DataError, match=re.escape(needle)) as info:
        detector.predict(value)
    assert isinstance(info.value, ValueError)
    _assert_one_line(info.value)


def test_bad_paths(detector, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a PNG")
    with pytest.raises(DataError, match="not an image") as info:
        detector.predict(fake)
    _assert_one_line(info.value)
    with pytest.raises(DataNotFoundError, match="image not found") as info:
        detector.predict(tmp_path / "missing.png")
    assert isinstance(info.value, FileNotFoundError)
    _assert_one_line(info.value)
    with pytest.raises(DataNotFoundError):
        detector.predict(str(tmp_path))  # a folder is not an image


def test_bad_color_order_and_batch_container(detector, images):
    with pytest.raises(DataError, match="color_order is 'HSV'"):
        detector.predict(images[0], color_order="HSV")
    with pytest.raises(DataError, match="color_order"):
        detector.predict(images[0], color_order=3)
    with pytest.raises(DataError, match="pass a list"):
        detector.predict_batch(images[0])
    with pytest.raises(DataError, match="image 1 has dtype complex128"):
        detector.predict_batch([images[0], np.zeros((4, 4), complex)])


_DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]
)
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def _frames(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([None, 3, "", [1, 2], np.zeros((3, 3), object)]))
    dtype = np.dtype(draw(_DTYPES))
    if kind <= 4:
        shape = draw(_SHAPES)  # anything, mostly refused
    else:  # plausible frames, mostly accepted
        shape = (draw(st.integers(2, 12)), draw(st.integers(2, 12)), *draw(st.sampled_from([(), (1,), (3,), (4,)])))
    elements = None
    if dtype.kind == "f" and draw(st.booleans()):
        elements = st.floats(0.0, draw(st.sampled_from([1.0, 255.0])), width=dtype.itemsize * 8)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=int(os.environ.get("EDGEIAD_FUZZ_EXAMPLES", "50")), deadline=10_000, derandomize=True)
@given(frame=_frames(), color_order=st.sampled_from([None, "RGB", "BGR", "bgr", "YUV"]))
def test_fuzz_predict_returns_finite_results_or_raises_value_error(detector, frame, color_order):
    try:
        result = detector.predict(frame, color_order=color_order)
    except EdgeiadError as error:  # DataError / DataNotFoundError and nothing else
        assert isinstance(error, DataError)
        _assert_one_line(error)
        event("clear error: DataError")
        return
    event("result")
    assert np.isfinite(result.raw_score) and np.isfinite(result.score)
    assert np.isfinite(result.anomaly_map).all() and result.anomaly_map.shape == np.shape(frame)[:2]
