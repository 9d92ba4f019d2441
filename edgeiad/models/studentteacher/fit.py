"""Train student and autoencoder on cached backbone features of the good images (EfficientAD-style).

The backbone is frozen, so its early (stride 4) and teacher (strides 8+16) features are computed once; each
epoch then trains only the two small networks (measured on BSData: ~5 s per epoch for 100 images on one
core; the cache holds ~1 MB per image at 256 px). The student's
first half learns the teacher with the hard-feature loss, the autoencoder learns the teacher through its
bottleneck, and the student's second half learns the autoencoder. Training stops early on 10 % held-out
images; another 10 %, never trained on, gives the quantiles that normalise the two maps.
"""

from __future__ import annotations

from ...errors import ConfigError, require_torch
from .._fitting import Stopwatch
from .._training import channel_statistics, fit_head
from .torch_model import StudentTeacherConfig, StudentTeacherModel

torch = require_torch()
nn = torch.nn


def _split(count: int, seed: int):
    """(training indices, quantile indices): 10 % of the images held out for map normalisation."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 7))
    held = max(1, count // 10) if count >= 8 else 0
    return (order[held:], order[:held]) if held else (order, order)


def _hard(local, quantile: float, generator):
    """The elements of the squared student error at or above its `quantile` (EfficientAD's hard-feature loss)."""
    flat = local.detach().flatten()
    if flat.numel() > 1 << 20:  # torch.quantile's input limit; a random million estimates it well
        flat = flat[torch.randperm(flat.numel(), generator=generator)[: 1 << 20]]
    return local[local >= torch.quantile(flat, quantile)]


@torch.no_grad()
def _cache_features(model: StudentTeacherModel, batches, device: str):
    """(early features, raw teacher features) of every training image, float32 on the CPU."""
    early, teacher = [], []
    for array, _samples in batches:
        first, second = model.features(torch.from_numpy(array).to(device))
        early.append(first.cpu())
        teacher.append(second.cpu())
    if not early:
        raise ConfigError("no training batches were produced: the training set is empty")
    return torch.cat(early), torch.cat(teacher)


def fit_student_teacher(config: StudentTeacherConfig, batches, device: str = "cpu", progress=None, initial=None):
    """Return (trained StudentTeacherModel on the CPU, info with epochs, losses and timings).

    `initial`: a trained model to continue from (fine-tuning on new images, as a shared model does in the
    continual study); teacher statistics and map quantiles are re-estimated on the new images."""
    watch = Stopwatch()
    model = StudentTeacherModel(config)
    if initial is not None:
        model.load_state_dict(initial.state_dict())
    model = model.to(device)
    with watch.time("embedding_s"):
        early, teacher = _cache_features(model, batches, device)
    train_index, quantile_index = _split(early.shape[0], config.seed)
    mean, std = channel_statistics(teacher[train_index])
    model.teacher_mean.copy_(mean.to(device))
    model.teacher_std.copy_(std.to(device))
    teacher = model.standardise(teacher.to(device)).cpu()
    generator = torch.Generator().manual_seed(config.seed)

    def losses(head, index, hard: bool):
        inputs, target = early[index].to(device), teacher[index].to(device)
        student = head["student"](inputs)
        reconstruction = head["autoencoder"](inputs)
        channels = target.shape[1]
        local = (target - student[:, :channels]).pow(2)
        if hard and config.hard_quantile > 0:
            local = _hard(local, config.hard_quantile, generator)
        return (
            local.mean()
            + (target - reconstruction).pow(2).mean()
            + (reconstruction - student[:, channels:]).pow(2).mean()
        )

    heads = nn.ModuleDict({"student": model.student, "autoencoder": model.autoencoder})
    with watch.time("training_s"):
        info = fit_head(
            heads,
            lambda head, index: losses(head, index, hard=True),
            train_index,
            config.train_settings(),
            progress,
            lambda head, index: losses(head, index, hard=False),  # every error counted: comparable epochs
        )
    with torch.no_grad():
        maps = [model.maps_from(early[c].to(device), teacher[c].to(device)) for c in quantile_index.split(16)]
    levels = torch.tensor([config.quantile_low, config.quantile_high])
    for position, name in enumerate(("local_quantiles", "global_quantiles")):
        values = torch.cat([pair[position].flatten().cpu() for pair in maps])
        low, high = torch.quantile(values[: 1 << 24], levels).tolist()
        getattr(model, name).copy_(torch.tensor([low, max(high, low + 1e-6)]))
    info = {"n_samples": int(early.shape[0]), "n_quantile_images": int(quantile_index.numel()), **info}
    return model.cpu().eval(), {**info, **watch.timings}
