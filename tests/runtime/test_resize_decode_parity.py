"""Without OpenCV in the runtime: numpy resize and Pillow/simplejpeg decoding give OpenCV's exact pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from edgeiad_runtime import resize as resize_module
from edgeiad_runtime.decode import decode_image_file
from edgeiad_runtime.postprocess import resize_map
from edgeiad_runtime.preprocess import Preprocessing, preprocess, read_image
from edgeiad_runtime.resize import resize_linear_uint8, resize_nearest

SIZES = [(300, 400, 256, 256), (1024, 768, 256, 256), (64, 80, 256, 256), (77, 131, 64, 64), (255, 257, 320, 192)]


@pytest.fixture(params=["numpy", "opencv"])
def resize_path(request, monkeypatch):
    """Both resize paths: numpy alone (a runtime without OpenCV) and the cv2.resize fast path."""
    monkeypatch.setattr(resize_module, "_opencv_module", None if request.param == "numpy" else cv2)
    return request.param


@pytest.mark.parametrize(("height", "width", "to_height", "to_width"), SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_linear_resize_is_bit_identical_to_opencv(height, width, to_height, to_width, channels, resize_path):
    rng = np.random.default_rng(height * width + channels)
    image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8).squeeze()
    expected = cv2.resize(image, (to_width, to_height), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_linear_uint8(image, to_height, to_width), expected)
    np.testing.assert_array_equal(
        resize_nearest(image, to_height, to_width), cv2.resize(image, (to_width, to_height), interpolation=0)
    )
    values = rng.random((height // 4 + 2, width // 4 + 2), dtype=np.float32) * 50
    np.testing.assert_allclose(
        resize_map(values, to_height, to_width), cv2.resize(values, (to_width, to_height)), rtol=1e-6, atol=1e-5
    )


def test_preprocess_matches_the_opencv_path_it_replaced(resize_path):
    rng = np.random.default_rng(5)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (333, 517, 3), dtype=np.uint8), (5, 5), 0)
    spec = Preprocessing(height=256, width=256)
    resized = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    expected = ((resized - 127.0) * np.float32(1 / 128.0)).transpose(2, 0, 1)
    np.testing.assert_array_equal(preprocess(rgb, spec), expected)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # a reversed-stride view reaches resize: both paths take it
    np.testing.assert_array_equal(preprocess(bgr, Preprocessing(height=256, width=256, channel_order="BGR")), expected)


@pytest.mark.parametrize("size", [(256, 192), (333, 517)])  # resized, and already at the model's size
def test_preprocess_is_the_per_channel_float32_formula_bit_for_bit(size):
    # The toolkit trains on what preprocess() returns: any faster path must keep (x - mean) * (1 / std) in float32
    # per channel, exactly, laid out as a C-contiguous 3xHxW array.
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)
    spec = Preprocessing(height=size[0], width=size[1], mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    resized = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_LINEAR) if size != rgb.shape[:2] else rgb
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
    expected = ((resized.astype(np.float32) - np.asarray(spec.mean, dtype=np.float32)) * inv_std).transpose(2, 0, 1)
    result = preprocess(rgb, spec)
    assert result.dtype == np.float32 and result.flags.c_contiguous and result.shape == (3, *size)
    np.testing.assert_array_equal(result.view(np.uint32), np.ascontiguousarray(expected).view(np.uint32))


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3), (40, 50, 4)])
def test_both_resize_paths_keep_the_layout(shape, monkeypatch):
    image = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    results = {}
    for name, module in (("numpy", None), ("opencv", cv2)):
        monkeypatch.setattr(resize_module, "_opencv_module", module)
        results[name] = (resize_linear_uint8(image, 31, 77), resize_nearest(image, 31, 77))
    for numpy_result, opencv_result in zip(*results.values()):
        assert numpy_result.shape == opencv_result.shape == (31, 77, *shape[2:])
        np.testing.assert_array_equal(numpy_result, opencv_result)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("layout", ["color", "gray", "alpha", "16-bit"])
def test_decoding_matches_opencv_imread(tmp_path, suffix, layout):
    rng = np.random.default_rng(1)
    color = cv2.GaussianBlur(rng.integers(0, 256, (61, 87, 3), dtype=np.uint8), (5, 5), 0)
    arrays = {"color": color, "gray": color[:, :, 1].copy(), "alpha": np.dstack([color, color[:, :, :1]])}
    arrays["16-bit"] = rng.integers(0, 65536, color.shape, dtype=np.uint16)
    if layout in ("alpha", "16-bit") and suffix in (".jpg", ".bmp"):
        pytest.skip(f"{suffix} has no {layout} layout")
    path = tmp_path / f"frame{suffix}"
    cv2.imwrite(str(path), arrays[layout])
    reference = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if reference.dtype == np.uint8:
        np.testing.assert_array_equal(decode_image_file(path), reference)
    reference = (reference >> 8).astype(np.uint8) if reference.dtype == np.uint16 else reference
    order = {2: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    expected = cv2.cvtColor(reference, order[reference.ndim if reference.ndim == 2 else reference.shape[2]])
    np.testing.assert_array_equal(read_image(path), expected)
