"""CCC metrics, per-subject analysis, subject bootstrap and validated post-processing (NumPy + Numba).

The public names below load on first use (PEP 562), so ``import abaw.metrics`` (done by the config
module, hence by every CLI start) pulls in neither Numba nor polars. Torch lives only in
``abaw.metrics.loss``, imported explicitly by training code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ccc": "abaw.metrics.concordance",
    "p_va": "abaw.metrics.concordance",
    "pair_stats": "abaw.metrics.concordance",
    "ccc_from_stats": "abaw.metrics.concordance",
    "pool_stats": "abaw.metrics.concordance",
    "SubjectStats": "abaw.metrics.subjects",
    "subject_stats": "abaw.metrics.subjects",
    "per_subject_table": "abaw.metrics.subjects",
    "BootstrapResult": "abaw.metrics.bootstrap",
    "bootstrap_ci": "abaw.metrics.bootstrap",
    "smooth": "abaw.metrics.smoothing",
    "PostprocessChoice": "abaw.metrics.postprocess",
    "apply_postprocess": "abaw.metrics.postprocess",
    "search_windows": "abaw.metrics.postprocess",
    "search_from_config": "abaw.metrics.postprocess",
    "window_scores": "abaw.metrics.postprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'abaw.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
