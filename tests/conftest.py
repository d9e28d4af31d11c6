"""Shared fixtures: one tiny generated release per test session, and a config pointing at it.

Nothing here reaches the network: backbones run with random weights (allow_random) and all media is
written by the synthetic generator.
"""

from __future__ import annotations

import os

import pytest

# Keep the 2-core CI machine responsive and results repeatable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "cache", ".numba"))

TINY_SCALE = 0.25  # a handful of short subjects; every planted trap is still present


@pytest.fixture(scope="session")
def synth_release(tmp_path_factory):
    """Path of a tiny synthetic release (generated once per session)."""
    from abaw.synth.generate import generate

    root = tmp_path_factory.mktemp("release") / "affwild2_synth"
    generate(root, seed=0, scale=TINY_SCALE)
    return root


@pytest.fixture(scope="session")
def synth_cfg(synth_release, tmp_path_factory):
    """A Config on the tiny release, with its own cache root and small, random-weight backbones."""
    from abaw.config import load_config

    cache = tmp_path_factory.mktemp("cache")
    return load_config(
        "configs/test.yaml",
        [f"data.root={synth_release}", f"cache_root={cache}"],
    )


@pytest.fixture(scope="session")
def synth_features_cfg(synth_cfg):
    """``synth_cfg`` with both feature caches extracted once per session (the real index and extractors)."""
    from abaw.features.extract import extract_features

    for kind in ("visual", "audio"):
        report = extract_features(synth_cfg, kind)
        assert report.ok, report.summary()
    return synth_cfg
