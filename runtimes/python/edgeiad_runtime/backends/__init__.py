"""Inference backends behind one interface; each optional backend imports its engine lazily."""

from .base import (
    BACKENDS,
    Backend,
    BackendChoice,
    BackendFallbackWarning,
    available_backends,
    choose_backend,
    create_backend,
    is_installed,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "BackendFallbackWarning",
    "available_backends",
    "choose_backend",
    "create_backend",
    "is_installed",
]
