"""Fusion models (torch only; knows no files): encoders, joint cross-attention, gates, heads, registry.

Importing the package stays light (no torch) because the config system imports ``abaw.models.config``;
the public names below load ``abaw.models.registry`` on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODELS", "FusionOutput", "build_model", "count_parameters", "register_model"]


def __getattr__(name: str) -> Any:
    if name in ("MODELS", "build_model", "count_parameters", "register_model"):
        from abaw.models import registry

        return getattr(registry, name)
    if name == "FusionOutput":
        from abaw.models.fusion import FusionOutput

        return FusionOutput
    raise AttributeError(f"module 'abaw.models' has no attribute {name!r}")
