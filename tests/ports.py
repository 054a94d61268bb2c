"""Ports for test servers, chosen where Ray does not look.

A port the OS hands out for `bind(("127.0.0.1", 0))` and that is then let go can be taken by a
Ray process in the meantime: Ray's own servers bind ports from the same ephemeral range, and its
workers take 10002-19999. Under two pytest-xdist workers that happened once in CI: an `mlflow
server` fixture found its port answered by Ray's gRPC, and its health check read binary."""

from __future__ import annotations

import os
import random
import socket

#: Below the Linux ephemeral range (32768-60999) and above Ray's worker ports (10002-19999).
RANGE = (20000, 32000)


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that Ray will not pick; spread by
    process id, so two test workers do not draw the same one."""
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    for _ in range(200):
        port = rng.randrange(*RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on 127.0.0.1 in {RANGE}")
