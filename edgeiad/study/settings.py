"""`edgeiad study --setting fewshot|noisy`: seed 004's manufacturing settings, every model, 3 seeds.

- fewshot: m ∈ {1, 2, 4, 8} good training images drawn per seed; a model that cannot train on m images is
  recorded as a refusal with its minimum, not as a number.
- noisy: defective images mixed into the good training images at 0 / 5 / 10 / 20 % of the training set (the
  seed's noise ratio), drawn per seed from the anomalous test images and removed from the test set. Models with
  a noise-robust option (`ModelSpec.noise_robust`) also run with it switched on at the noise level (the user's
  estimate of the share of bad parts), as "<model> +robust".

The test set of every dataset is fixed once (all of it, or a stratified `max_test` subsample, seed 0); noisy
training images come first from the anomalous test images outside it, so at most noise levels every model is
scored on the same images. Each case records image AUROC, pixel AUROC and AUPRO, fit time, latency at batch 1,
peak memory (fit and inference) and the model's statistics size. Results are saved after every case; an
interrupted study resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data import Dataset, load_dataset, load_rgb
from ..errors import ConfigError, DataError
from ..runs import versions, write_json
from . import memory
from .runner import jsonable, resume_document

SETTINGS = {"fewshot": (1, 2, 4, 8), "noisy": (0.0, 0.05, 0.1, 0.2)}
SCHEMA_VERSION = 1
WARMUP_CALLS = 2


@dataclass
class SettingPlan:
    """What one settings study runs (validated before the first case)."""

    setting: str
    models: list[str]
    datasets: list[str]
    levels: tuple = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    max_train: int = 0  # noisy: good training images kept per seed (0 = all)
    max_test: int = 0  # test images kept per dataset, stratified (0 = all)
    settings: dict = field(default_factory=dict)  # model name or "*" → config overrides (as `--set`)
    threads: int = 1
    latency_images: int = 10

    def validate(self) -> None:
        from ..models import get_model
        from .plan import StudyPlan

        if self.setting not in SETTINGS:
            raise ConfigError(f"--setting {self.setting!r} is not a manufacturing setting: use one of {list(SETTINGS)}")
        self.levels = tuple(self.levels or SETTINGS[self.setting])
        if self.setting == "fewshot" and any(int(m) != m or m < 1 for m in self.levels):
            raise ConfigError(f"few-shot levels {self.levels} must be whole numbers of images >= 1, e.g. 1,2,4,8")
        if self.setting == "noisy" and any(not 0.0 <= r < 0.5 for r in self.levels):
            raise ConfigError(f"noise levels {self.levels} must be shares in [0, 0.5), e.g. 0.05,0.1,0.2")
        if not self.seeds or self.max_train < 0 or self.max_test < 0:
            raise ConfigError("a settings study needs at least one seed, and --max-train/--max-test >= 0")
        for model in self.models:
            get_model(model)
        StudyPlan(self.models, self.datasets, self.settings, threads=self.threads).validate()

    def entries(self) -> list[tuple[str, str, bool]]:
        """(label, model, robust) in table order; the noisy setting adds "+robust" rows where a model has one."""
        from ..models import get_model

        found = []
        for model in self.models:
            found.append((model, model, False))
            if self.setting == "noisy" and get_model(model).noise_robust:
                found.append((f"{model} +robust", model, True))
        return found

    def overrides(self, model: str, robust: bool, level) -> dict:
        from ..models import get_model
        from .plan import StudyPlan, Variant

        chosen = StudyPlan([model], self.datasets, self.settings).overrides(model, Variant("default"))
        if robust:
            chosen[get_model(model).noise_robust] = float(level) if level else 0.0
        return chosen


def run_setting_study(plan: SettingPlan, out: Path, echo=None, command: str = "") -> dict:
    """Run every dataset × level × seed × model case (resuming finished ones); write setting.json/.md/.html."""
    from ..errors import require_torch

    plan.validate()
    torch = require_torch()
    torch.set_num_threads(plan.threads)
    echo = echo or (lambda message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{plan.setting}.json"
    document = _resume(path, plan, command)
    done = {case["id"]: case for case in document["cases"]}
    entries = plan.entries()
    total = len(plan.datasets) * len(plan.levels) * len(plan.seeds) * len(entries)
    count, started, fresh = 0, time.perf_counter(), 0
    for spec in plan.datasets:
        base = load_dataset(spec)
        pool = evaluation_pool(base, plan.max_test)
        for level in plan.levels:
            for seed in plan.seeds:
                dataset, data_info = setting_dataset(base, pool, plan.setting, level, seed, plan.max_train)
                for label, model, robust in entries:
                    count += 1
                    if robust and not level:
                        continue  # the option at 0 % is the plain model
                    case_id = f"{label}|{plan.setting}={level}|seed={seed}|{base.name}"
                    if case_id in done:
                        continue
                    echo(f"[{count}/{total}] {case_id} ({_eta(started, fresh, total - count + 1)})")
                    overrides = plan.overrides(model, robust, level)
                    record = run_setting_case(plan, model, overrides, dataset)
                    record.update(id=case_id, label=label, model=model, robust=robust, level=level, seed=seed)
                    record.update(dataset=base.name, data=spec, overrides=jsonable(overrides), **data_info)
                    done[case_id] = record
                    fresh += 1
                    echo(f"    {_line(record)}")
                    document["cases"] = list(done.values())
                    _save(out, plan.setting, document)
    document["cases"] = list(done.values())
    return _save(out, plan.setting, document)


def evaluation_pool(dataset: Dataset, max_test: int) -> list:
    """The test images every case of a dataset is scored on: all, or a stratified seeded subsample."""
    labels = {sample.label for sample in dataset.test}
    if labels != {0, 1}:
        raise DataError(
            f"dataset {dataset.name} needs good and anomalous test images for a settings study (found labels "
            f"{sorted(labels)}): use an MVTec-layout folder with test/good and test/<defect>"
        )
    if not max_test or max_test >= len(dataset.test):
        return list(dataset.test)
    rng = np.random.default_rng(0)
    good = [i for i, s in enumerate(dataset.test) if s.label == 0]
    bad = [i for i, s in enumerate(dataset.test) if s.label != 0]
    take_good = max(1, round(max_test * len(good) / len(dataset.test)))
    chosen = rng.choice(good, take_good, replace=False).tolist()
    chosen += rng.choice(bad, max(1, max_test - take_good), replace=False).tolist()
    return [dataset.test[i] for i in sorted(chosen)]


def setting_dataset(base: Dataset, pool: list, setting: str, level, seed: int, max_train: int):
    """The dataset one case trains and is scored on, and what was drawn (counts, actual noise share)."""
    rng = np.random.default_rng(seed)
    if setting == "fewshot":
        count = int(level)
        if count > len(base.train):
            raise DataError(f"few-shot m={count} exceeds the {len(base.train)} good training images of {base.name}")
        picks = sorted(rng.choice(len(base.train), count, replace=False).tolist())
        train = [base.train[i] for i in picks]
        return replace(base, train=train, test=list(pool)), {"n_train": count, "n_test": len(pool)}
    good = list(base.train)
    if max_train and len(good) > max_train:
        good = [good[i] for i in sorted(rng.choice(len(good), max_train, replace=False).tolist())]
    wanted = math.floor(level * len(good) / (1.0 - level) + 0.5) if level else 0
    inside = {sample.path for sample in pool}
    anomalous = [s for s in base.test if s.label != 0]
    outside = [s for s in anomalous if s.path not in inside]
    within = [s for s in pool if s.label != 0]
    # Never more than half of the pool's anomalous images leave it, so every case still scores defects.
    available = len(outside) + len(within) // 2
    if wanted > available:
        raise DataError(
            f"noise {level:.0%} of {len(good)} good images needs {wanted} defective images but {base.name} has "
            f"{available} to spare: lower the level or --max-train"
        )
    order_out = rng.permutation(len(outside)).tolist()
    noise = [outside[i] for i in order_out[:wanted]]
    if len(noise) < wanted:
        order_in = rng.permutation(len(within)).tolist()
        noise += [within[i] for i in order_in[: wanted - len(noise)]]
    taken = {sample.path for sample in noise}
    test = [s for s in pool if s.path not in taken]
    info = {
        "n_train": len(good) + len(noise),
        "n_noise": len(noise),
        "noise_share": round(len(noise) / (len(good) + len(noise)), 4),
        "n_test": len(test),
    }
    return replace(base, train=good + noise, test=test), info


def run_setting_case(plan: SettingPlan, model: str, overrides: dict, dataset: Dataset) -> dict:
    """Fit eagerly, score the test set, time batch-1 inference; a model that cannot train records why."""
    from ..engine import compute_metrics, fit_model, score_samples
    from ..models import get_model

    spec = get_model(model)
    if len(dataset.train) < spec.min_train_images:
        return {"refused": f"needs >= {spec.min_train_images} images", "min_train_images": spec.min_train_images}
    config = spec.make_config(**overrides)
    with memory.peak() as fit_peak:
        fitted, fit = fit_model(config, dataset)
    scored = score_samples(fitted, dataset.test, config.preprocessing(), with_masks=dataset.has_masks)
    with memory.peak() as infer_peak:
        latency = _latency(fitted, dataset, config.preprocessing(), plan.latency_images)
    return {
        "metrics": compute_metrics(scored),
        "fit_s": fit["fit_s"],
        "latency_ms": latency,
        "fit_peak_mb": fit_peak.increase_mb,
        "infer_peak_mb": infer_peak.peak_mb,
        "model_mb": round(memory.statistics_mb(fitted), 3),
        "fit": jsonable(fit),
    }


def _latency(model, dataset: Dataset, preprocessing, count: int) -> float | None:
    """Median eager inference time at batch 1 (preprocessing included, decode excluded), in ms."""
    from edgeiad_runtime.preprocess import preprocess

    from ..engine import eager_infer

    if count == 0:
        return None
    infer = eager_infer(model)
    picks = np.linspace(0, len(dataset.test) - 1, min(count, len(dataset.test))).round().astype(int)
    frames = [load_rgb(dataset.test[i]) for i in sorted(set(picks.tolist()))]
    for frame in frames[:WARMUP_CALLS]:
        infer(preprocess(frame, preprocessing)[None])
    times = []
    for frame in frames:
        start = time.perf_counter()
        infer(preprocess(frame, preprocessing)[None])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _resume(path: Path, plan: SettingPlan, command: str) -> dict:
    fresh = {
        "schema_version": SCHEMA_VERSION,
        "setting": plan.setting,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "levels": list(plan.levels),
        "seeds": list(plan.seeds),
        "max_train": plan.max_train,
        "max_test": plan.max_test,
        "threads": plan.threads,
        "settings": jsonable(plan.settings),
        "versions": versions(),
        "cases": [],
    }
    same = ("schema_version", "max_train", "max_test", "settings")
    conflict = f"a {plan.setting} study with other --max-train/--max-test/--set values"
    earlier = resume_document(path, fresh, same, conflict)
    earlier.update(command=command or earlier.get("command", ""), levels=fresh["levels"], seeds=fresh["seeds"])
    return earlier


def _save(out: Path, setting: str, document: dict) -> dict:
    from .setting_report import write_setting_reports

    document["summary"] = write_setting_reports(out, setting, document)  # the mean ± std tables, for scripts too
    write_json(out / f"{setting}.json", document)
    return document


def _eta(started: float, done: int, left: int) -> str:
    if done == 0:
        return "first case"
    return f"about {(time.perf_counter() - started) / done * left / 60:.0f} min left"


def _line(record: dict) -> str:
    if "refused" in record:
        return f"refused: {record['refused']}"
    metrics = record["metrics"]
    parts = [f"{k}={metrics[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro") if k in metrics]
    parts += [f"fit {record['fit_s']:.1f} s"]
    if record["latency_ms"] is not None:
        parts.append(f"{record['latency_ms']:.1f} ms")
    return ", ".join(parts)
