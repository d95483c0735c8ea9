"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

Nothing in the project may depend on a Redis at a fixed address: a developer's laptop
runs none, or runs one holding someone else's data. The test session starts its own
(or uses ``CARDQ_TEST_REDIS_URL``), with persistence off, and stops it at the end.
:meth:`RedisServer.stop` and :meth:`RedisServer.start` on the same object keep the port,
so a test or the pool benchmark can take the store away and bring it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

from .broker import _die_with_parent, end_process, free_port


class RedisUnavailable(RuntimeError):
    pass


class RedisServer:
    """``with RedisServer() as server: server.url``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        path = shutil.which("redis-server")
        if path is None:
            raise RedisUnavailable(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        return path

    def start(self, timeout: float = 10.0) -> RedisServer:
        self._process = subprocess.Popen(
            [
                self.binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"redis-server did not answer PING in {timeout:.0f} s")
            time.sleep(0.01)
        return self

    def ping(self) -> bool:
        """True when a server answers ``PING`` on our port (a raw RESP exchange, no client)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        end_process(self._process)
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
