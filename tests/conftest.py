"""Shared fixtures: one tiny generated release per test session, and a config pointing at it.

Nothing here reaches the network: backbones run with random weights (allow_random) and all media is
written by the synthetic generator.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

# Keep the 2-core CI machine responsive and results repeatable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "cache", ".numba"))

def _loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it already needs the network
        return False


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """The suite must not reach the network (weights hubs, downloads): an internet connection from this
    process fails the test that made it, naming the address. Loopback (DDP's gloo, local servers) and
    Unix sockets (the PostgreSQL fixture) stay allowed."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise OSError(f"a test tried to reach the network ({address!r}); tests must stay hermetic")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        yield


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
