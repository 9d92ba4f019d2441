"""`edgeiad study`: every chosen model on every chosen dataset with one fixed configuration, in one table.

A default is judged by its mean over datasets (and its mean rank), never by one dataset: the study trains each
model × dataset (× variant of one factor), scores the exported ONNX artifact through the torch-free runtime (or
the eager model, labelled so), and writes study.json, study.md and study.html.
"""

from .plan import StudyPlan, Variant, parse_settings, parse_vary
from .runner import run_study

__all__ = ["StudyPlan", "Variant", "parse_settings", "parse_vary", "run_study"]
