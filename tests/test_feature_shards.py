"""Sharded extraction as separate processes started at once (issue 14, item 2): the shards of an array job
fill one cache byte-identical to a single process, each subject is extracted exactly once (per-subject
locks, also against an unsharded process racing them), and a shard killed mid-way and restarted does
only its own remaining work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_features import FAST

from abaw.config import load_config
from abaw.features.cache import FeatureCache
from abaw.features.extract import extract_features, feature_dir

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
COUNTS = re.compile(r"(\d+) extracted, (\d+) already done, (\d+) failed")


def cache_bytes(cache_dir: Path) -> dict[str, bytes]:
    """Every subject file (features, masks, input records), byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(cache_dir.iterdir()) if p.suffix in (".npy", ".json")
            and p.name not in ("manifest.json", "settings.json")}


def _overrides(synth_release, cache: Path) -> list[str]:
    return [f"data.root={synth_release}", f"cache_root={cache}", *FAST]


@pytest.fixture(scope="module")
def single(synth_release, tmp_path_factory):
    """One unsharded, uninterrupted extraction: what every parallel layout must reproduce."""
    # In its own process, like the shards: nothing an earlier test did in this process can enter it.
    overrides = _overrides(synth_release, tmp_path_factory.mktemp("single"))
    out, err = _cli(overrides).communicate(timeout=600)
    assert "FAILED" not in out + err, err[-3000:]
    cache = FeatureCache(feature_dir(load_config("configs/test.yaml", overrides), "visual"))
    assert cache.complete
    return sorted(cache.subjects()), cache_bytes(cache.path)


def _cli(overrides: list[str], *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "abaw.cli", "features", "-c", "configs/test.yaml", "--only", "visual", *flags,
         *overrides],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_parallel_shards_fill_one_cache_like_one_process(synth_release, single, tmp_path):
    subjects, expected = single
    overrides = _overrides(synth_release, tmp_path / "cache")
    # Two shards of an array job, plus an unsharded process racing both (as a user re-running
    # `abaw features` on a login node would): all start at once, with no shared parent state.
    procs = [_cli(overrides, "--shard", "0/2"), _cli(overrides, "--shard", "1/2"), _cli(overrides)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    counts = [tuple(int(x) for x in COUNTS.search(out).groups()) for out, _ in outs]
    assert sum(c[0] for c in counts) == len(subjects), counts  # each subject extracted exactly once
    assert all(c[0] + c[1] == (len(subjects) + 1) // 2 or c[0] + c[1] == len(subjects) // 2
               for c in counts[:2]), counts
    assert counts[2][0] + counts[2][1] == len(subjects) and all(c[2] == 0 for c in counts)
    cfg = load_config("configs/test.yaml", overrides)
    cache = FeatureCache(feature_dir(cfg, "visual"))
    assert cache.complete and cache.subjects() == subjects
    assert cache_bytes(cache.path) == expected
    assert not list(cache.path.glob("*.tmp")) and not list(cache.path.glob(".*.tmp"))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from abaw.config import load_config
    real_replace, published = os.replace, [0]

    def replace(src, dst):
        # SIGKILL at the rename that would publish this shard's second subject.
        if str(dst).endswith(".npy") and not str(dst).endswith(".mask.npy"):
            if published[0] == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            published[0] += 1
        return real_replace(src, dst)

    os.replace = replace
    from abaw.features.extract import extract_features
    extract_features(load_config("configs/test.yaml", sys.argv[2:]), "visual", shard=sys.argv[1])
    """
)


def test_killed_shard_restarted_does_only_its_own_remaining_work(synth_release, single, tmp_path):
    subjects, expected = single
    overrides = _overrides(synth_release, tmp_path / "cache")
    share0, share1 = subjects[0::2], subjects[1::2]
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "0/2", *overrides], cwd=REPO, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    cfg = load_config("configs/test.yaml", overrides)
    cache = FeatureCache(feature_dir(cfg, "visual"))
    done = cache.subjects()
    assert len(done) == 1 and done[0] in share0

    again = extract_features(cfg, "visual", shard="0/2")
    assert again.ok and again.skipped == done and sorted(again.extracted) == sorted(set(share0) - set(done))
    assert not again.complete and not set(cache.subjects()) & set(share1)
    last = extract_features(cfg, "visual", shard="1/2")
    assert sorted(last.extracted) == share1 and last.complete
    got = cache_bytes(cache.path)
    assert got.keys() == expected.keys()
    # Byte for byte: the killed shard's subject was written by a subprocess, the others in this process
    # (after training runs earlier in the suite: see abaw/metrics/_threads.py).
    assert got == expected
