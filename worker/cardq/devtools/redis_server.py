"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

Nothing in the project may depend on a Redis at a fixed address: a developer's laptop
runs none, or runs one holding someone else's data. The test session starts its own
(or uses ``CARDQ_TEST_REDIS_URL``), with persistence off, and stops it at the end.
:meth:`RedisServer.stop` and :meth:`RedisServer.start` on the same object keep the port,
so a test or the pool benchmark can take the store away and bring it back. With
``persist_dir`` the server keeps an append-only file there (fsynced each second, and in
full on a SIGTERM shutdown), so a stop and start is an outage, not a loss of data: what
a production Redis with persistence does.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from .process import LocalServer, ServerUnavailable


class RedisUnavailable(ServerUnavailable): ...


class RedisServer(LocalServer):
    """``with RedisServer() as server: server.url``."""

    def __init__(self, port: int | None = None, persist_dir: Path | None = None) -> None:
        super().__init__(port)
        self.persist_dir = persist_dir

    @staticmethod
    def binary() -> str:
        path = shutil.which("redis-server")
        if path is None:
            raise RedisUnavailable(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        return path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        persist = ["--appendonly", "no"]
        if self.persist_dir is not None:
            self.persist_dir.mkdir(parents=True, exist_ok=True)
            persist = ["--appendonly", "yes", "--appendfsync", "everysec"]
            persist += ["--dir", str(self.persist_dir)]
        self._spawn(
            [
                self.binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persist,
                "--maxclients",
                "10000",
            ]
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if (code := self.exit_code()) is not None:
                raise RedisUnavailable(f"redis-server exited with code {code}")
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

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
