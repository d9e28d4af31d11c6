"""The suite is hermetic: conftest.py fails any connection beyond loopback (weights hubs, downloads)."""

import socket

import pytest


def test_a_connection_beyond_loopback_fails_the_test():
    with socket.socket() as s, pytest.raises(OSError, match="hermetic"):
        s.connect(("8.8.8.8", 53))


def test_loopback_stays_open():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.socket() as c:
            c.connect(srv.getsockname())
