"""Fit time and peak RSS: PatchCore / PaDiM on 200 ELPV images (full), on a tiny synthetic set (CI)."""

from __future__ import annotations

import pytest

from .conftest import full_only, run_isolated

pytest.importorskip("torch", reason="needs the [train] extra")

FIT_CODE = """
import time, torch
torch.set_num_threads({threads})
from edgeiad.data import iter_batches, load_dataset
from edgeiad.models import get_model
spec = get_model("{model}")
config = spec.make_config(**{overrides})
dataset = load_dataset({data!r})
start = time.perf_counter()
model, info = spec.fit()(config, iter_batches(dataset.train, config.preprocessing()), device="cpu")
result = dict(model="{model}", data={data!r}, n_train=len(dataset.train), fit_s=time.perf_counter() - start, **info)
"""


def fit_case(model: str, data: str, overrides: dict, threads: int = 2) -> dict:
    return run_isolated(FIT_CODE.format(model=model, data=data, overrides=overrides, threads=threads))


@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_fit_tiny(benchmark, synthetic_mvtec, model):
    overrides = {"image_size": (64, 64)}
    result = benchmark.pedantic(fit_case, args=(model, str(synthetic_mvtec), overrides, 1), rounds=1, iterations=1)
    assert result["n_train"] == 12 and result["fit_s"] > 0 and result["peak_rss_mb"] > 0


@full_only
@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_fit_elpv_200_images(benchmark, model):
    result = benchmark.pedantic(fit_case, args=(model, "elpv-mono", {}), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nfit {model} on ELPV mono: {result}")
