"""A throwaway Apache Kafka broker (single node, KRaft) assembled from Maven Central.

Why: users run cardq against Apache Kafka, and what matters in production is only proven on
the real broker - its group coordinator (joins, rebalances, static membership), the high
watermark behind the lag metric, fetch latency, SASL and TLS. Tansu
(:mod:`cardq.devtools.broker`) stays the one-second default; this is the slower, truer one.

The jars and a formatted storage template are made once per machine
(:mod:`cardq.devtools.kafka_install`, steps 1 and 2 there); what was found when the rest
was checked (OpenJDK 17.0.15, Debian 12, two cores shared with other work, so times vary by
a factor of two or three):

3. **Broker.** ``java -Xmx512m -XX:+UseSerialGC -cp 'libs/*' kafka.Kafka server.properties``
   (RSS about 360 MB). Loading classes is most of the start: 6.8-7.1 s of CPU, 16-35 s of
   wall time until a metadata request answers on the busy machine; with a class-data
   archive written by the first broker at exit (``-XX:ArchiveClassesAtExit``, 50 MB in
   the cache) 4.0-4.8 s of CPU and 3-8 s. The log cleaner's dedupe buffer (128 MB of heap
   by default) is cut to 8 MB. Without a log4j2 file log4j prints errors only; ours sends
   warnings to ``broker.log`` in the broker's temp folder (:attr:`KafkaBroker.log_path`).
4. **TLS.** A PEM key *file* needs ``ssl.key.password``, and Java 17 cannot read the PBES2
   encrypted keys that OpenSSL and ``cryptography`` write ("PBES2 SecretKeyFactory not
   available"); an unencrypted PKCS#8 key and its chain given inline
   (``ssl.keystore.key``, ``ssl.keystore.certificate.chain``) work.
5. **Stop.** SIGTERM is a controlled shutdown of 1-3 s; after 10 s it is killed. The
   broker gets ``PR_SET_PDEATHSIG`` like Tansu, so a killed test run leaves none behind;
   it must be started from a thread that lives as long as the broker (see :meth:`_launch`).

The settings are tuned for tests: no initial rebalance delay, replication factors 1, four
offsets partitions (instead of fifty, all created at the first group join), a minimum
session timeout of 500 ms so tests may use short ones, and 8 MB records so a test can
produce one larger than the worker accepts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaClient

from .broker import create_topics
from .kafka_install import (
    KAFKA_VERSION,
    KafkaUnavailable,
    cache_dir,
    class_archive,
    ensure_libs,
    format_storage,
    java_binary,
    java_command,
    storage_template,
    write_properties,
)
from .process import LocalServer, free_port, port_open

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaUnavailable",
    "SaslSsl",
    "cache_dir",
    "ensure_libs",
    "java_binary",
]


@dataclass(frozen=True)
class SaslSsl:
    """A second listener speaking SASL_SSL with SCRAM-SHA-512.

    The broker's key and certificate chain are given as PEM text and written inline into
    the broker's config (``ssl.keystore.type=PEM``). The key must be unencrypted PKCS#8:
    Kafka reads a PEM key *file* only with a key password, and Java 17 cannot decrypt the
    PBES2 keys that OpenSSL and ``cryptography`` write ("PBES2 SecretKeyFactory not
    available", found when tried).
    """

    key_pem: str
    certificate_chain_pem: str
    users: Mapping[str, str] = field(default_factory=dict)  # name -> password


class KafkaBroker(LocalServer):
    """``async with KafkaBroker() as broker: broker.bootstrap_servers``, like ``TansuBroker``."""

    def __init__(
        self,
        port: int | None = None,
        *,
        heap: str = "512m",
        sasl_ssl: SaslSsl | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.controller_port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port = free_port() if sasl_ssl else None
        self.sasl_ssl_bootstrap_servers = f"127.0.0.1:{self.sasl_ssl_port}" if sasl_ssl else None
        self.heap = heap
        self.extra_config = dict(config or {})
        self.start_seconds: float | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._archive_being_written: Path | None = None

    def properties(self, data_dir: Path) -> dict[str, str]:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.sasl_ssl is not None:
            listeners.append(f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "500",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            # Above the worker's own 1 MB record bound, so tests can show it refusing more.
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        if self.sasl_ssl is not None:
            props.update(
                {
                    "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                    "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                    "listener.name.sasl_ssl.ssl.keystore.key": self.sasl_ssl.key_pem,
                    "listener.name.sasl_ssl.ssl.keystore.certificate.chain": (
                        self.sasl_ssl.certificate_chain_pem
                    ),
                }
            )
        props.update(self.extra_config)
        return props

    @property
    def _workdir(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name)

    @property
    def log_path(self) -> Path:
        """The broker's stdout/stderr (warnings and errors), kept until :meth:`stop`."""
        return self._workdir / "broker.log"

    def _prepare(self) -> list[str]:
        """The blocking part: jars, config, storage; returns the broker's command."""
        libs = ensure_libs()
        self._dir = tempfile.TemporaryDirectory(prefix="cardq-kafka-")
        work = self._workdir
        data = work / "data"
        config = write_properties(work / "server.properties", self.properties(data))
        users = dict(self.sasl_ssl.users) if self.sasl_ssl else {}
        if users:
            format_storage(libs, work, config, users)
        else:
            # a plain broker's settings: a template must not carry this one's TLS or extras
            shutil.copytree(storage_template(libs, KafkaBroker().properties), data)
        return java_command(
            libs, work, *self._class_archive_options(), "kafka.Kafka", str(config), heap=self.heap
        )

    def _class_archive_options(self) -> list[str]:
        """Start from a class-data archive of the broker's classes when there is one; else
        have this broker write one as it exits (moved into place by :meth:`stop`).

        Why: loading Kafka's and Scala's classes is most of the start's CPU. With the
        archive a start took 4.0-4.8 s of CPU instead of 6.8-7.1 s (measured). The file
        (about 50 MB) is named after the Java binary, so another JDK makes a new one, and a
        stale one is ignored by the JVM (``-Xshare:auto``)."""
        archive = class_archive()
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}"]
        self._archive_being_written = self._workdir / "classes.jsa"
        return [f"-XX:ArchiveClassesAtExit={self._archive_being_written}"]

    def _launch(self, command: list[str]) -> None:
        """In the caller's thread, never a worker thread: ``PR_SET_PDEATHSIG`` fires when the
        *thread* that started the child ends, and executor threads end with their loop."""
        with open(self.log_path, "wb") as log:
            self._spawn(command, output=log)

    async def start(self, timeout: float = 90.0) -> KafkaBroker:
        began = time.monotonic()
        try:
            self._launch(await asyncio.to_thread(self._prepare))
            await self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def start_blocking(self, timeout: float = 90.0) -> KafkaBroker:
        """For synchronous callers (session fixtures, benchmarks), even inside a running event
        loop: the broker is started from this thread, only the readiness poll gets its own."""
        began = time.monotonic()
        try:
            self._launch(self._prepare())
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self._wait_ready(timeout)).result()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    async def _wait_ready(self, timeout: float) -> None:
        """Until a metadata request names this broker: the port opens a moment before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if (code := self.exit_code()) is not None:
                raise KafkaUnavailable(
                    f"the Kafka broker exited with code {code}: {self._log_tail()}"
                )
            if loop.time() > deadline:
                raise KafkaUnavailable(
                    f"the Kafka broker did not answer a metadata request in {timeout:.0f} s: "
                    f"{self._log_tail()}"
                )
            if await port_open(self.port) and await self._metadata_answers():
                return
            await asyncio.sleep(0.2)

    async def _metadata_answers(self) -> bool:
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000)
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except Exception:  # not ready yet, whatever the reason: polled again
            return False
        finally:
            await client.close()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        meaningful = [line for line in lines if "ERROR" in line or "Exception" in line]
        return " | ".join((meaningful or lines)[-3:])[:500] or "empty log"

    async def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        await create_topics(self.bootstrap_servers, names, partitions)

    def stop(self) -> None:
        # writing the class archive at exit takes a few seconds more
        self.stop_grace_s = 10 if self._archive_being_written is None else 30
        super().stop()
        written, self._archive_being_written = self._archive_being_written, None
        if written is not None and written.exists():
            archive = class_archive()
            partial = archive.with_name(f"{archive.name}.{os.getpid()}.part")
            try:
                shutil.copyfile(written, partial)
                os.replace(partial, archive)  # others see the whole file or none
            except OSError:
                partial.unlink(missing_ok=True)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def __aenter__(self) -> KafkaBroker:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> int:  # pragma: no cover - a manual tool
    """``python -m cardq.devtools.kafka``: start one, print its address, wait for Ctrl-C."""
    broker = KafkaBroker()
    began = time.monotonic()
    try:
        libs = ensure_libs()
        print(f"jars: {libs} ({time.monotonic() - began:.1f} s)", flush=True)
        broker.start_blocking()
    except KafkaUnavailable as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 2
    print(
        f"kafka {KAFKA_VERSION} at {broker.bootstrap_servers} "
        f"(started in {broker.start_seconds:.1f} s); Ctrl-C stops it",
        flush=True,
    )
    try:
        assert broker._process is not None
        broker._process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
