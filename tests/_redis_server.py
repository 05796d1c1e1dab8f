"""A real ``redis-server`` for tests (issue 10: never a mock): started on a free loopback port with
persistence off, stopped (and restartable on the same port) by the tests.

Skips with the reason when no ``redis-server`` binary or no redis-py exists; fails instead when the
environment variable CI is set, since CI must run these tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

HOST = "127.0.0.1"


def _require(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (CI is set) but missing")
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server --port P --bind 127.0.0.1 --save "" --appendonly no`` as a subprocess."""

    def __init__(self, *extra: str):
        binary = shutil.which("redis-server")
        _require("the redis-server binary", binary is not None)
        try:
            import redis  # noqa: F401
        except ImportError:
            _require("redis-py (pip install 'seqrec-fast[redis]')", False)
        self.binary = binary
        self.port = free_port()
        self.extra = extra
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host=HOST, port=self.port, db=0, socket_timeout=2)

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 - any failure to connect means "not up yet"
                time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()
        self.proc = None
