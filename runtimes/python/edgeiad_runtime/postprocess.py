"""Turn raw model outputs into thresholded, normalised scores and maps at the input image's size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .resize import resize_linear_float, resize_linear_uint8


def normalize(values: np.ndarray | float, threshold: float, low: float, high: float) -> np.ndarray | float:
    """Min-max normalise around a threshold so it lands on 0.5: clip((x - t) / (max - min) + 0.5, 0, 1)."""
    span = (high - low) or 1.0  # a degenerate range (max == min) would divide by zero
    if isinstance(values, np.ndarray):
        # One float32 buffer updated in place: maps of large frames are hundreds of MB each.
        scaled = np.subtract(values, np.float32(threshold), dtype=np.float32)
        np.divide(scaled, np.float32(span), out=scaled)
        np.add(scaled, np.float32(0.5), out=scaled)
        return np.clip(scaled, np.float32(0.0), np.float32(1.0), out=scaled)
    return float(min(max((float(values) - threshold) / span + 0.5, 0.0), 1.0))


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize an HxW float32 map to (height, width), the input image's size."""
    anomaly_map = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    if anomaly_map.shape == (height, width):
        return anomaly_map.copy()
    return resize_linear_float(anomaly_map, height, width)


@dataclass(frozen=True)
class ScoreSpec:
    """The thresholds and normalisation range an artifact was calibrated with."""

    image_threshold: float | None
    pixel_threshold: float | None
    normalize: bool
    centred: bool = True  # minmax_threshold: the threshold lands on 0.5; minmax: plain (x - min) / (max - min)
    image_min: float | None = None
    image_max: float | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None

    @classmethod
    def from_manifest(cls, manifest: dict) -> ScoreSpec:
        """Read the `thresholds` and `normalization` sections of a validated manifest."""
        thresholds, norm = manifest["thresholds"], manifest["normalization"]
        return cls(
            image_threshold=thresholds["image"],
            pixel_threshold=thresholds["pixel"],
            normalize=norm["method"] != "none",
            centred=norm["method"] == "minmax_threshold",
            image_min=norm.get("image_min"),
            image_max=norm.get("image_max"),
            pixel_min=norm.get("pixel_min"),
            pixel_max=norm.get("pixel_max"),
        )

    def score(self, raw: float) -> float | None:
        """Normalised image score (0.5 = threshold when centred), or None without a threshold or normalisation."""
        if self.image_threshold is None or not self.normalize:
            return None
        centre = self._centre(self.image_threshold, self.image_min, self.image_max)
        return normalize(raw, centre, self.image_min, self.image_max)

    def _centre(self, threshold: float, low: float, high: float) -> float:
        # normalize() puts its `threshold` on 0.5; plain min-max is the same formula centred on the midpoint.
        return threshold if self.centred else (low + high) / 2.0

    def is_anomalous(self, raw: float) -> bool | None:
        """Decide on the raw score so the label never depends on rounding in the normalisation."""
        return None if self.image_threshold is None else bool(raw >= self.image_threshold)

    def map(self, raw_map: np.ndarray) -> np.ndarray:
        """Normalised map when a pixel threshold and normalisation exist, else the raw map itself."""
        if self.pixel_threshold is None or not self.normalize:
            return raw_map
        centre = self._centre(self.pixel_threshold, self.pixel_min, self.pixel_max)
        return normalize(raw_map, centre, self.pixel_min, self.pixel_max)

    def mask(self, raw_map: np.ndarray) -> np.ndarray | None:
        """Boolean defect mask from the raw pixel threshold, or None without one."""
        if self.pixel_threshold is None:
            return None
        return raw_map >= float32_at_least(self.pixel_threshold)


def float32_at_least(value: float) -> np.float32:
    """Smallest float32 >= value, so `float32_map >= it` equals the exact float64 comparison."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return rounded


def jet_bgr(unit: np.ndarray) -> np.ndarray:
    """The JET colour map (blue → cyan → yellow → red) of values in 0..1, as uint8 BGR."""
    levels = np.clip(unit, 0.0, 1.0).astype(np.float32)[..., None]
    centres = np.array([1.0, 2.0, 3.0], dtype=np.float32)  # B, G, R peak at 1/4, 2/4, 3/4
    rgb = np.clip(1.5 - np.abs(4.0 * levels - centres), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def heat_overlay(bgr: np.ndarray, unit_map: np.ndarray) -> np.ndarray:
    """JET colour map of a 0..1 map blended 50/50 over a BGR frame (the map is resized to the frame)."""
    heat = jet_bgr(np.rint(np.clip(unit_map, 0.0, 1.0) * 255.0) / 255.0)
    if heat.shape[:2] != bgr.shape[:2]:
        heat = resize_linear_uint8(heat, bgr.shape[0], bgr.shape[1])
    blended = (bgr.astype(np.uint16) + heat.astype(np.uint16) + 1) >> 1  # 50/50, rounded like addWeighted
    return blended.astype(np.uint8)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside pixels with an outside 4-neighbour), grown by `width`."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)  # the frame border counts as outside: a mask touching it is outlined there too
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~inner
    for _ in range(width - 1):  # thicken so a 1-pixel line survives viewing at reduced size
        grown = np.pad(edge, 1)
        edge = grown[1:-1, 1:-1] | grown[:-2, 1:-1] | grown[2:, 1:-1] | grown[1:-1, :-2] | grown[1:-1, 2:]
    return edge


def annotated_overlay(
    bgr: np.ndarray,
    unit_map: np.ndarray,
    threshold: float | None = None,
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """heat_overlay plus what a reviewer needs: the threshold contour (white), the ground-truth outline (green)
    and a colour bar on the right (0 at the bottom, 1 at the top, a white tick at the threshold)."""
    frame = heat_overlay(bgr, unit_map)
    height, width = frame.shape[:2]
    line = max(1, round(max(height, width) / 300))
    if threshold is not None:
        full = resize_linear_float(np.asarray(unit_map, np.float32), height, width)
        frame[outline(full >= threshold, line)] = (255, 255, 255)
    if truth is not None and truth.any():
        frame[outline(truth.astype(bool), line)] = (0, 200, 0)
    bar_width = max(8, width // 20)
    levels = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    bar = jet_bgr(levels)
    if threshold is not None:
        row = int(round((1.0 - min(max(threshold, 0.0), 1.0)) * (height - 1)))
        bar[max(row - line, 0) : row + line + 1] = (255, 255, 255)
    gap = np.full((height, max(2, bar_width // 4), 3), 255, np.uint8)
    return np.concatenate([frame, gap, bar], axis=1)
