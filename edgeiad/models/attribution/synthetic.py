"""Synthetic defects for training a good-vs-defective classifier (seed 000's attribution-map family).

Three product-agnostic kinds, each returning the damaged image and its mask: cut-paste (a patch of the same
image moved elsewhere, CutPaste, Li et al. 2021), noise blobs (an irregular region of coloured noise) and
scratches (thin random polylines). numpy + OpenCV only, deterministic for a given generator.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("cutpaste", "blob", "scratch")


def cut_paste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    ph, pw = (int(rng.integers(max(4, height // 10), max(5, height // 4))) for _ in range(2))
    sy, sx = int(rng.integers(0, height - ph)), int(rng.integers(0, width - pw))
    dy, dx = int(rng.integers(0, height - ph)), int(rng.integers(0, width - pw))
    patch = image[sy : sy + ph, sx : sx + pw].copy()
    if rng.random() < 0.5:
        patch = patch[::-1]
    out = image.copy()
    out[dy : dy + ph, dx : dx + pw] = np.clip(patch.astype(np.int16) + int(rng.integers(-40, 41)), 0, 255)
    mask = np.zeros((height, width), np.uint8)
    mask[dy : dy + ph, dx : dx + pw] = 1
    return out, mask


def noise_blob(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    axes = (int(rng.integers(3, max(4, width // 8))), int(rng.integers(3, max(4, height // 8))))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    noise = rng.integers(0, 256, image.shape, dtype=np.uint8)
    out = np.where(mask[..., None] > 0, (0.5 * image + 0.5 * noise).astype(np.uint8), image)
    return out, mask


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    points = np.cumsum(rng.normal(0, width / 8, (int(rng.integers(2, 5)), 2)), axis=0)
    points += (rng.uniform(0, width), rng.uniform(0, height))
    cv2.polylines(mask, [points.astype(np.int32).reshape(-1, 1, 2)], False, 1, int(rng.integers(1, 4)))
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    out = np.where(mask[..., None] > 0, colour, image).astype(np.uint8)
    return out, mask


def to_uint8(batch: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Undo the (x - mean) / std normalisation: N×3×H×W float → N×H×W×3 uint8 (exact for the model input)."""
    pixels = batch.transpose(0, 2, 3, 1) * std + mean
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 → the model's N×3×H×W float input."""
    return np.ascontiguousarray(((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2))


def damage(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect of a random kind on a copy of an HxWx3 uint8 image; (image, 0/1 mask)."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    out, mask = {"cutpaste": cut_paste, "blob": noise_blob, "scratch": scratch}[kind](image, rng)
    if mask.sum() == 0:  # a scratch can fall outside the frame: fall back to a blob
        out, mask = noise_blob(image, rng)
    return out, mask
