"""How much should --noise-robust F drop? PatchCore denoise and PaDiM trim at F x c, noise 10 % and 20 %."""

import json
from pathlib import Path

import torch

from edgeiad.data import load_dataset
from edgeiad.study.settings import SettingPlan, evaluation_pool, run_setting_case, setting_dataset

torch.set_num_threads(1)
out = Path("tune_noise_robust.json")
done = json.loads(out.read_text()) if out.is_file() else {}
plan = SettingPlan("noisy", ["patchcore"], ["x"], latency_images=0)
for spec in ["../shared/data/bsdata", "../shared/data/dev/cfd", "../shared/data/dev/deeppcb"]:
    base = load_dataset(spec)
    pool = evaluation_pool(base, 100)
    for level in (0.1, 0.2):
        for seed in (0, 1):
            data, info = setting_dataset(base, pool, "noisy", level, seed, 60)
            for model, knob in (("patchcore", "denoise"), ("padim", "trim")):
                for mult in (0.0, 0.1, 0.25, 0.5):
                    key = f"{model}|{mult}|{level}|{seed}|{base.name}"
                    if key in done:
                        continue
                    over = {"image_size": (256, 256), knob: level * mult}
                    rec = run_setting_case(plan, model, over, data)
                    done[key] = {k: rec["metrics"].get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
                    print(key, done[key], flush=True)
                    out.write_text(json.dumps(done, indent=1))
