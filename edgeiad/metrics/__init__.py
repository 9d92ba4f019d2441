"""Exact anomaly-detection metrics on numpy arrays: image AUROC/AP/F1/FPR@TPR and pixel AUROC/F1/AUPRO."""

from edgeiad.metrics.image import average_precision, f1_max, fpr_at_tpr, image_metrics, roc_auc
from edgeiad.metrics.pixel import PixelAccumulator, aupro, pixel_metrics

__all__ = [
    "PixelAccumulator",
    "aupro",
    "average_precision",
    "f1_max",
    "fpr_at_tpr",
    "image_metrics",
    "pixel_metrics",
    "roc_auc",
]
