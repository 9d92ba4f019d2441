"""The model input size: kept at the training images' aspect ratio, or squashed as configured."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="config tests need the [train] extra")

from edgeiad.errors import ConfigError  # noqa: E402
from edgeiad.models import get_model  # noqa: E402


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(460, 1130)], (160, 400)),
        ([(640, 640)], (256, 256)),
        ([(300, 600)] * 3, (176, 368)),
        ([(900, 300)], (448, 144)),
    ],
)
def test_aspect_resize_keeps_the_aspect_ratio_and_the_pixel_count(sizes, expected):
    config = get_model("padim").make_config(image_size=(256, 256))
    assert config.fitted_to(sizes) == expected
    height, width = expected
    assert abs(height * width - 256 * 256) / (256 * 256) < 0.05
    assert abs(width / height - sizes[0][1] / sizes[0][0]) < 0.1


def test_small_images_are_enlarged_by_at_most_max_upscale():
    spec = get_model("patchcore")
    assert spec.make_config(image_size=(384, 384)).fitted_to([(80, 80)]) == (128, 128)  # 1.5 x 80 = 120 -> 128
    assert spec.make_config(image_size=(384, 384), max_upscale=2.0).fitted_to([(80, 80)]) == (160, 160)
    assert spec.make_config(image_size=(384, 384), max_upscale=0).fitted_to([(80, 80)]) == (384, 384)
    assert spec.make_config(image_size=(384, 384)).fitted_to([(104, 256)]) == (160, 384)
    with pytest.raises(ConfigError, match="max_upscale"):
        spec.make_config(max_upscale=-1)


def test_squash_keeps_the_configured_size_and_old_configs_load_as_fitted():
    spec = get_model("patchcore")
    assert spec.make_config(resize="squash").fitted_to([(460, 1130)]) == spec.make_config().image_size
    legacy = spec.config_cls().from_dict({"model": "patchcore", "image_size": [256, 256]})
    # a config.json written before these fields existed reloads as it was fitted
    assert (legacy.resize, legacy.interpolation, legacy.max_upscale) == ("squash", "linear", 0.0)
    assert spec.make_config().resize == "aspect"


@pytest.mark.parametrize("name", ["patchcore", "padim", "ensemble", "npad", "efficientad"])
def test_feature_bank_models_default_to_aspect_384_and_trained_models_keep_squash_256(name):
    # chosen per model family by `edgeiad study` (docs/quality-study.md)
    config = get_model(name).make_config()
    if name in ("patchcore", "padim", "ensemble"):
        share = 0.02 if name == "patchcore" else 0.05
        assert (config.resize, config.image_size, config.score_share) == ("aspect", (384, 384), share)
    else:
        assert (config.resize, config.image_size) == ("squash", (256, 256))
