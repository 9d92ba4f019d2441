"""Graph-exportable building blocks shared by the feature-statistics models (PatchCore, PaDiM)."""

from __future__ import annotations

import math

from ..errors import require_torch

torch = require_torch()
nn = torch.nn
F = torch.nn.functional


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with reflect padding, as two fixed convolutions (exports as plain Conv)."""

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        radius = int(4.0 * sigma + 0.5)
        coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        self.radius = radius
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1), persistent=False)
        self._operators: dict[tuple[int, int], object] = {}

    def forward(self, x):
        if self.radius == 0:
            return x
        x = F.conv2d(F.pad(x, (self.radius, self.radius, 0, 0), mode="reflect"), self.kernel_h)
        return F.conv2d(F.pad(x, (0, 0, self.radius, self.radius), mode="reflect"), self.kernel_v)

    def upsampled(self, x, size: tuple[int, int]):
        """`forward(F.interpolate(x, size, bilinear))`, as two small matrix products.

        Bilinear upsampling and the separable blur are both linear and act on each axis alone, so together they
        are one size × cells matrix per axis: map = A_rows · x · A_colsᵀ. For a 48×48 patch grid to a 384×384
        map that is ~8 M multiply-adds, where the Resize and the two 33-tap convolutions at full size (and the
        layout changes around them) took 7.4 ms of PaDiM's graph in ONNX Runtime, one thread; now 0.8 ms."""
        rows = self.axis_operator(x.shape[-2], size[0]).to(x.device, x.dtype)
        cols = self.axis_operator(x.shape[-1], size[1]).to(x.device, x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))

    def axis_operator(self, cells: int, size: int):
        """size × cells matrix: linear upsampling (align_corners=False) of `cells` samples to `size`, then this
        blur's 1-D Gaussian with reflect padding. Built once per shape in an eager call (export runs one before it
        traces), so an exported graph holds it as a constant."""
        key = (int(cells), int(size))
        if key not in self._operators:
            with torch.no_grad():
                impulses = torch.eye(key[0], dtype=torch.float64).unsqueeze(1)  # cells × 1 × cells
                line = F.interpolate(impulses, size=key[1], mode="linear", align_corners=False)
                if self.radius:
                    kernel = self.kernel_h.reshape(1, 1, -1).to(torch.float64)
                    line = F.conv1d(F.pad(line, (self.radius, self.radius), mode="reflect"), kernel)
            self._operators[key] = line[:, 0, :].transpose(0, 1).float().contiguous()
        return self._operators[key]


def aggregate_features(features: list, neighbourhood: int = 1, mode: str = "bilinear"):
    """Concatenate multi-scale maps at the finest map's resolution, each first averaged over its
    `neighbourhood`×`neighbourhood` cells when that is above 1 (PatchCore's locally aware patch features)."""
    if neighbourhood > 1:
        pad = neighbourhood // 2
        features = [
            F.avg_pool2d(f, kernel_size=neighbourhood, stride=1, padding=pad, count_include_pad=False) for f in features
        ]
    size = features[0].shape[-2:]
    resized = [features[0]]
    for feature in features[1:]:
        if mode == "nearest":
            resized.append(F.interpolate(feature, size=size, mode="nearest"))
        else:
            resized.append(F.interpolate(feature, size=size, mode="bilinear", align_corners=False))
    return torch.cat(resized, dim=1)


def min_euclidean(queries, bank, bank_sq_norms=None):
    """Distance from each query row to its nearest bank row, in matmul form (one GEMM, no N×M×D tensor).

    min_j ||q - b_j||^2 = ||q||^2 + min_j (||b_j||^2 - 2 q.b_j). The bank term rides in the GEMM: queries get a
    column of ones and the bank the column ||b_j||^2 beside -2 b_j, a constant once baked. So the N×M score
    matrix is written once by the MatMul and read once by the min, with no separate Add pass over it (PatchCore
    at 384 px, 2304 queries × 4608 rows: the Add was 9 ms of 72 in ONNX Runtime, one thread). The query term is
    added after the min; clamped at 0 because cancellation can go slightly negative.
    """
    if bank_sq_norms is None:
        bank_sq_norms = (bank * bank).sum(dim=1)
    augmented_bank = torch.cat([-2.0 * bank, bank_sq_norms.unsqueeze(1)], dim=1)
    augmented_queries = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=-1)
    nearest = torch.matmul(augmented_queries, augmented_bank.transpose(0, 1)).min(dim=-1).values
    query_sq = (queries * queries).sum(dim=-1)
    return torch.sqrt(torch.clamp(nearest + query_sq, min=0.0))


@torch.no_grad()
def chunked_min_euclidean(queries, bank, query_chunk: int = 1024, bank_chunk: int = 4096):
    """Nearest-bank distance (and index) for many queries with bounded memory.

    Peak extra memory is query_chunk x bank_chunk floats (16 MB at the defaults), whatever the sizes: a 20k x 200k
    search never materialises its 16 GB distance matrix. Each block is |b|² − 2·q·b from one GEMM; |q|², the same
    for every row of the bank, is added after the minimum. The blocks are small enough to stay in cache: at 4096 x
    16384 the passes over the block cost more than the GEMM (k-means of 16k x 150 points against 13k centres, one
    thread: 2.5x slower, /work/studies/s11/cme.py).
    """
    bank_sq = (bank * bank).sum(dim=1).unsqueeze(0)
    distances = torch.empty(queries.shape[0], dtype=queries.dtype)
    indices = torch.empty(queries.shape[0], dtype=torch.long)
    for q_start in range(0, queries.shape[0], query_chunk):
        q = queries[q_start : q_start + query_chunk]
        best = torch.full((q.shape[0],), math.inf, dtype=q.dtype)
        best_index = torch.zeros(q.shape[0], dtype=torch.long)
        for b_start in range(0, bank.shape[0], bank_chunk):
            block = bank[b_start : b_start + bank_chunk]
            partial = torch.addmm(bank_sq[:, b_start : b_start + bank_chunk], q, block.T, alpha=-2.0)
            values, where = partial.min(dim=1)
            better = values < best
            best = torch.where(better, values, best)
            best_index = torch.where(better, where + b_start, best_index)
        distances[q_start : q_start + q.shape[0]] = torch.sqrt(torch.clamp(best + (q * q).sum(dim=1), min=0.0))
        indices[q_start : q_start + q.shape[0]] = best_index
    return distances, indices


# Working memory one scoring call may hold for models whose per-image working set is large (N-pad): their eager
# scoring and their exported artifacts' default batch stay below it.
SCORING_MEMORY_BUDGET = 1 << 30


def memory_bounded_batch(model, wanted: int) -> int:
    """At most `wanted` images per scoring call; fewer when `model.working_bytes_per_image()` times the batch would
    pass SCORING_MEMORY_BUDGET (never fewer than one)."""
    per_image = getattr(model, "working_bytes_per_image", None)
    if per_image is None:
        return wanted
    return max(1, min(wanted, SCORING_MEMORY_BUDGET // max(int(per_image()), 1)))


# TensorRT's TopK takes K ≤ 3840 (export/trt_check.py's TOPK_MAX_K; a test keeps the two equal).
TOPK_MAX_K = 3840


def score_stride(image_size: tuple[int, int], score_share: float, wanted: int = 1) -> int:
    """Pixel stride of the map that the top-share image score reads: `wanted` (the model's `score_stride`; 1 = every
    pixel), raised when that share of the map's pixels is more than TensorRT's TopK takes (5 % of 384 × 384 is
    7,373) to the smallest stride s whose every s-th pixel in both axes fits (384 px: s = 2, K = 1,844). The map is an
    upsampled patch grid smoothed with σ = 4 px, so its top share barely moves within s pixels, and the TopK reads s²
    times fewer values."""
    height, width = image_size
    stride = max(1, int(wanted))
    while math.ceil(score_share * math.ceil(height / stride) * math.ceil(width / stride)) > TOPK_MAX_K:
        stride += 1
    return stride


def to_anomaly_map(
    patch_scores, image_size: tuple[int, int], blur: GaussianBlur, score_share: float = 0.0, stride: int = 1
):
    """Upsample N×1×h×w patch scores to the input size and smooth them; the image score is the map's max, or with
    `score_share` > 0 the mean of that share of the map's highest pixels (a constant-K TopK in the graph, read on
    every `score_stride`-th pixel: `stride` or more, so that K stays within TensorRT's limit).

    The top share is taken on the smoothed map, not the raw patch scores: that is what the study measured
    (PatchCore at 384, image AUROC max → top 5 %: bsdata-full 0.938 → 0.959, cfd 0.915 → 0.943, ELPV mono
    0.880 → 0.902), and smoothing keeps one noisy patch from deciding the score on its own."""
    anomaly_map = blur.upsampled(patch_scores, tuple(image_size))
    return anomaly_map, map_score(anomaly_map, score_share, stride)


def map_score(anomaly_map, score_share: float = 0.0, stride: int = 1):
    """N image scores of an N×1×H×W smoothed map: its max, or the mean of its top `score_share` of the pixels read
    every `score_stride(…, stride)`-th pixel in both axes."""
    if score_share > 0:
        stride = score_stride(tuple(anomaly_map.shape[-2:]), score_share, stride)
        flat = (anomaly_map[:, :, ::stride, ::stride] if stride > 1 else anomaly_map).flatten(1)
        count = max(1, math.ceil(score_share * flat.shape[1]))
        return torch.topk(flat, count, dim=1).values.mean(dim=1)
    return torch.amax(anomaly_map, dim=(1, 2, 3))


class MapScoring:
    """Mixin for models with `image_size`, `blur`, a `config.score_share` and `config.score_stride`: their patch
    scores → map and score."""

    @property
    def score_is_map_max(self) -> bool:
        return self.config.score_share == 0

    def to_map(self, patch_scores):
        """Patch scores → (anomaly map at the input size, image score)."""
        return to_anomaly_map(
            patch_scores, self.image_size, self.blur, self.config.score_share, self.config.score_stride
        )
