"""`edgeiad study --setting continual`: products in a fixed order as tasks (seed 004's continual setting).

Two deployment designs per model, side by side:
- per product: one model fitted per task (its statistics are a sidecar swapped at run time when the product
  changes). No model is ever changed after its task, so forgetting is zero by construction: each task is scored
  once by its own model and that score stands at every later step. Memory grows with the tasks.
- shared: one model carried from task to task. PatchCore/PaDiM/N-pad take each task's images through
  `edgeiad update` (the bank re-selected under `max_bank`, the Gaussians from running sums); learned models
  (EfficientAD) are fine-tuned on each new task from the current weights. After every task the model is scored
  on every task seen.

Reported per model and design, mean ± std over seeds: the final average over tasks, the forgetting measure
FM = mean over earlier tasks of (best score at any earlier step − final score), and the statistics' size after
the last task. Every task shares one input size (squashed to `image_size`, default 256×256), so one model can
serve them all.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from edgeiad_runtime.files import atomic_write

from ..data import Dataset, load_dataset
from ..errors import ConfigError
from ..runs import versions, write_json
from . import memory
from .runner import jsonable, resume_document
from .settings import evaluation_pool

SCHEMA_VERSION = 1
DESIGNS = ("per-product", "shared")
METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"))
SHARED_DEFAULTS = {"resize": "squash", "image_size": (256, 256), "max_bank": 4096}


@dataclass
class ContinualPlan:
    """Models, the task order (datasets), config overrides, seeds and the per-task train/test caps."""

    models: list[str]
    tasks: list[str]
    settings: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    max_train: int = 0
    max_test: int = 0
    threads: int = 1

    def validate(self) -> None:
        from .plan import StudyPlan

        if len(self.tasks) < 2:
            raise ConfigError("a continual study needs at least two tasks: pass --data a --data b (in task order)")
        if not self.seeds or self.max_train < 0 or self.max_test < 0:
            raise ConfigError("a continual study needs at least one seed, and --max-train/--max-test >= 0")
        StudyPlan(self.models, self.tasks, self.settings).validate()
        for model in self.models:
            self.overrides(model)

    def overrides(self, model: str) -> dict:
        """The model's settings, with one input size for every task (and PatchCore's bank budget) by default."""
        from dataclasses import fields

        from ..models import get_model
        from .plan import StudyPlan, Variant

        names = {f.name for f in fields(get_model(model).config_cls())}
        chosen = {k: v for k, v in SHARED_DEFAULTS.items() if k in names}
        chosen.update(StudyPlan([model], self.tasks, self.settings).overrides(model, Variant("default")))
        get_model(model).make_config(**chosen)
        return chosen


def run_continual_study(plan: ContinualPlan, out: Path, echo=None, command: str = "") -> dict:
    """Run every model × seed through the task sequence in both designs; write continual.json/.md/.html."""
    from ..errors import require_torch

    plan.validate()
    require_torch().set_num_threads(plan.threads)
    echo = echo or (lambda message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "continual.json"
    document = _resume(path, plan, command)
    bases = [load_dataset(spec) for spec in plan.tasks]
    pools = [evaluation_pool(base, plan.max_test) for base in bases]
    for seed in plan.seeds:
        tasks = [_task(base, pool, seed, plan.max_train) for base, pool in zip(bases, pools)]
        for model in plan.models:
            for design in DESIGNS:
                key = f"{model}|{design}|seed={seed}"
                if key in document["runs"]:
                    continue
                echo(f"{key}: {' -> '.join(t.name for t in tasks)}")
                record = _sequence(model, design, plan.overrides(model), tasks, seed, echo)
                if record is None:
                    echo(f"    {model} has no way to update a shared model; shared design skipped")
                    continue
                document["runs"][key] = record
                echo(f"    final {_fmt_final(record)}")
                _save(out, document)
    return _save(out, document)


def _task(base: Dataset, pool: list, seed: int, max_train: int) -> Dataset:
    train = list(base.train)
    if max_train and len(train) > max_train:
        rng = np.random.default_rng(seed)
        train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False).tolist())]
    return replace(base, train=train, test=list(pool))


def _sequence(model_name: str, design: str, overrides: dict, tasks: list[Dataset], seed: int, echo) -> dict | None:
    """acc[step][task] for one model, design and seed, with fit times and statistics sizes after each step."""
    from ..engine import compute_metrics, fit_model, score_samples
    from ..models import get_model

    spec = get_model(model_name)
    updater = spec.update()
    fine_tune = "initial" in inspect.signature(spec.fit()).parameters
    if design == "shared" and updater is None and not fine_tune:
        return None
    scores: list[list[dict]] = []
    steps: list[dict] = []
    models, shared = [], None
    for step, task in enumerate(tasks):
        started = time.perf_counter()
        with memory.peak() as peak:
            if design == "per-product" or shared is None:
                fitted, info = fit_model(spec.make_config(**{**overrides, "seed": seed}), task)
            elif updater is not None:
                fitted, info = _carry(lambda config, model, batches: updater(config, model, model.running, batches),
                                      shared, task)  # fmt: skip
            else:
                fitted, info = _carry(lambda config, model, batches: spec.fit()(config, batches, initial=model),
                                      shared, task)  # fmt: skip
        fit_s = round(time.perf_counter() - started, 2)
        if design == "shared":
            shared = fitted
        else:
            models.append(fitted)
        row = []
        for seen, earlier in enumerate(tasks[: step + 1]):
            if design == "per-product" and seen < step:
                row.append(scores[seen][seen])  # its own model, unchanged since: the same images, the same score
                continue
            scorer = shared if design == "shared" else models[seen]
            scored = score_samples(scorer, earlier.test, scorer.config.preprocessing(), with_masks=earlier.has_masks)
            row.append(_metrics(compute_metrics(scored)))
        scores.append(row)
        size = sum(memory.statistics_mb(m) for m in models) if design == "per-product" else memory.statistics_mb(shared)
        steps.append({"task": task.name, "fit_s": fit_s, "fit_peak_mb": peak.increase_mb, "statistics_mb": size,
                      "fit": jsonable(info)})  # fmt: skip
        echo(f"    after {task.name}: " + ", ".join(f"{t.name} {r['image_auroc']:.3f}" for t, r in zip(tasks, row)))
    return {
        "model": model_name,
        "design": design,
        "seed": seed,
        "tasks": [t.name for t in tasks],
        "scores": scores,
        "steps": steps,
        "result": {key: forgetting(scores, key) for _, key in METRICS},
    }


def _carry(step, model, task: Dataset):
    """The shared model taken on to `task` by `step(config, model, batches)` (an update or a fine-tune), seeded
    and timed."""
    from ..data import iter_batches
    from ..models._fitting import seed_everything

    config = model.config
    seed_everything(config.seed)
    started = time.perf_counter()
    fitted, info = step(config, model, iter_batches(task.train, config.preprocessing()))
    info["fit_s"] = round(time.perf_counter() - started, 3)
    return fitted, info


def _metrics(metrics: dict) -> dict:
    return {key: metrics.get(key) for _, key in METRICS}


def forgetting(scores: list[list[dict]], key: str) -> dict:
    """Final average over all tasks and FM = mean over earlier tasks of (best earlier score − final score)."""
    final = [row.get(key) for row in scores[-1]]
    present = [v for v in final if v is not None]
    drops = []
    for task in range(len(scores) - 1):
        history = [scores[step][task].get(key) for step in range(task, len(scores) - 1)]
        history = [v for v in history if v is not None]
        if history and final[task] is not None:
            drops.append(max(history) - final[task])
    return {
        "final_average": float(np.mean(present)) if present else None,
        "forgetting": float(np.mean(drops)) if drops else None,
    }


def summarise(document: dict) -> list[dict]:
    """One row per model × design: mean ± std over seeds of final average, FM, statistics size, fit time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in document["runs"].values():
        groups.setdefault((record["model"], record["design"]), []).append(record)
    rows = []
    for (model, design), records in groups.items():
        row = {"model": model, "design": design, "seeds": len(records)}
        for _, key in METRICS:
            for part in ("final_average", "forgetting"):
                values = [r["result"][key][part] for r in records if r["result"][key][part] is not None]
                row[f"{key}_{part}"] = [float(np.mean(values)), float(np.std(values))] if values else None
        sizes = [r["steps"][-1]["statistics_mb"] for r in records]
        row["statistics_mb"] = [float(np.mean(sizes)), float(np.std(sizes))]
        fits = [sum(step["fit_s"] for step in r["steps"]) for r in records]
        row["fit_s"] = [float(np.mean(fits)), float(np.std(fits))]
        rows.append(row)
    return rows


def _pm(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def tables(document: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    summary = document["summary"]
    header = ["model", "design", "seeds", "final image AUROC", "FM image", "final pixel AUROC", "FM pixel",
              "statistics MB", "fit s (all tasks)"]  # fmt: skip
    rows = [[r["model"], r["design"], str(r["seeds"]), _pm(r["image_auroc_final_average"]),
             _pm(r["image_auroc_forgetting"]), _pm(r["pixel_auroc_final_average"]), _pm(r["pixel_auroc_forgetting"]),
             _pm(r["statistics_mb"], 1), _pm(r["fit_s"], 1)] for r in summary]  # fmt: skip
    found = [("final average and forgetting (mean ± std over seeds)", header, rows)]
    for record in document["runs"].values():
        if record["seed"] != min(document["seeds"]):
            continue
        tasks = record["tasks"]
        grid = []
        for step, row in enumerate(record["scores"]):
            cells = [_one(row[i]) if i < len(row) else "" for i in range(len(tasks))]
            grid.append([f"after {tasks[step]}", *cells, f"{record['steps'][step]['statistics_mb']:.1f}"])
        title = f"{record['model']}, {record['design']}, seed {record['seed']}: image AUROC on each task"
        found.append((title, ["step", *tasks, "statistics MB"], grid))
    return found


def _one(metrics: dict) -> str:
    value = metrics.get("image_auroc")
    return "–" if value is None else f"{value:.3f}"


def markdown(document: dict) -> str:
    lines = ["# edgeiad study: continual setting (seed 004)", ""]
    if document.get("command"):
        lines += [f"`{document['command']}`", ""]
    lines += [_protocol(document), ""]
    from .report import _md_table

    for title, header, rows in tables(document):
        lines += [f"## {title}", "", *_md_table(header, rows), ""]
    return "\n".join(lines)


def _protocol(document: dict) -> str:
    cap = f"{document['max_train']} good images per task and seed" if document["max_train"] else "all good images"
    test = f"a stratified subsample of {document['max_test']}" if document["max_test"] else "all"
    return (
        f"Tasks in order: {', '.join(document['tasks'])}. Training: {cap}; scored on {test} test images per task "
        f"(eager PyTorch, {document['threads']} thread(s)); seeds {', '.join(map(str, document['seeds']))}. "
        "per-product: a model per task (FM 0 by construction; memory = the sum of their statistics). shared: one "
        "model updated task by task (PatchCore bank re-selected under max_bank, PaDiM/N-pad running sums, "
        "EfficientAD fine-tuned). FM = mean over earlier tasks of (best earlier score − final score)."
    )


def html_report(document: dict) -> str:
    import html

    from .report import STYLE, _html_table

    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>edgeiad continual study</title>"
        f"<style>{STYLE}</style></head><body><h1>edgeiad study: continual setting</h1>"
        f"<p><code>{html.escape(document.get('command', ''))}</code></p><p>{html.escape(_protocol(document))}</p>"
    ]
    for title, header, rows in tables(document):
        parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")
    parts.append("</body></html>\n")
    return "".join(parts)


def _resume(path: Path, plan: ContinualPlan, command: str) -> dict:
    fresh = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "tasks": list(plan.tasks),
        "seeds": list(plan.seeds),
        "max_train": plan.max_train,
        "max_test": plan.max_test,
        "threads": plan.threads,
        "settings": jsonable(plan.settings),
        "versions": versions(),
        "runs": {},
    }
    same = ("schema_version", "tasks", "max_train", "max_test", "settings")
    earlier = resume_document(path, fresh, same, "a continual study with other tasks or settings")
    earlier.update(command=command or earlier.get("command", ""), seeds=fresh["seeds"])
    return earlier


def _save(out: Path, document: dict) -> dict:
    document["summary"] = summarise(document)
    write_json(out / "continual.json", document)
    for suffix, text in (("md", markdown(document)), ("html", html_report(document))):
        atomic_write(out / f"continual.{suffix}", [text.encode("utf-8")])
    return document


def _fmt_final(record: dict) -> str:
    result = record["result"]["image_auroc"]
    fm = result["forgetting"]
    return f"image AUROC {result['final_average']:.3f}, FM {fm:.3f}" if fm is not None else "–"
