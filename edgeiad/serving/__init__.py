"""Serving: Triton model repositories from artifacts (`edgeiad triton`), a local PyTriton server (`edgeiad serve`)."""

from .repository import MANIFEST_COPY, Settings, settings_from_profile, write_repository

__all__ = ["MANIFEST_COPY", "Settings", "settings_from_profile", "write_repository"]
