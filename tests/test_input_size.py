"""The model input size: kept at the training images' aspect ratio, or squashed as configured."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="config tests need the [train] extra")

from edgeiad.models import get_model  # noqa: E402


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [([(460, 1130)], (160, 416)), ([(640, 640)], (256, 256)), ([(80, 80)] * 3, (256, 256)), ([(300, 600)], (176, 368))],
)
def test_aspect_resize_keeps_the_pixel_count(sizes, expected):
    config = get_model("padim").make_config()
    assert config.fitted_to(sizes) == expected
    height, width = expected
    assert abs(height * width - 256 * 256) / (256 * 256) < 0.05


def test_squash_keeps_the_configured_size_and_old_configs_load_as_fitted():
    spec = get_model("patchcore")
    assert spec.make_config(resize="squash").fitted_to([(460, 1130)]) == (256, 256)
    legacy = spec.config_cls().from_dict({"model": "patchcore", "image_size": [256, 256]})
    assert legacy.resize == "squash"  # a config.json written before the field existed reloads as it was fitted
    assert spec.make_config().resize == "aspect"
