"""A throwaway Apache Kafka broker (single node, KRaft) assembled from Maven Central.

Why: users run cardq against Apache Kafka, and what matters in production is only proven on
the real broker - its group coordinator (joins, rebalances, static membership), the high
watermark behind the lag metric, fetch latency, SASL and TLS. Tansu
(:mod:`cardq.devtools.broker`) stays the one-second default; this is the slower, truer one.

How, and what was found when each step was checked (OpenJDK 17.0.15, Maven 3.8.7, Debian 12,
two cores shared with other work, so times vary by a factor of two or three):

1. **Jars.** Since Kafka 4.0 the broker is one artifact with ordinary dependencies. A tiny
   pom naming ``org.apache.kafka:kafka_2.13:4.1.1`` and ``log4j-slf4j-impl`` 2.24.3 (the
   binding the distribution ships) and ``mvn -B dependency:copy-dependencies
   -DincludeScope=runtime`` copies 46 jars (43 MB, the set in the tarball's ``libs/``):
   28-51 s with an empty ``~/.m2`` (which grows by 56 MB), 18 s when ``~/.m2`` has them.
   They are kept in ``~/.cache/cardq/kafka/4.1.1/libs`` (``$CARDQ_KAFKA_CACHE`` overrides
   the folder, ``$XDG_CACHE_HOME`` is honoured), assembled under a file lock so two test
   sessions never assemble at once, and trusted only once a ``complete`` stamp exists.
2. **Storage.** ``kafka.tools.StorageTool format -t <id> -c server.properties`` (no
   ``--standalone``: the quorum is the static ``controller.quorum.voters``) is a JVM start
   of its own, 2.5-12 s; it writes only ``meta.properties`` and ``bootstrap.checkpoint``,
   neither naming a port, so it is done once per machine and copied
   (:func:`storage_template`). ``--add-scram 'SCRAM-SHA-512=[name=..,password=..]'`` puts
   SCRAM users into the bootstrap metadata, so a SASL broker is formatted afresh.
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
import base64
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiokafka import AIOKafkaClient

from .broker import _die_with_parent, create_topics, end_process, free_port

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cardq.devtools</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
"""


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, Maven failed, or the broker did not come up; the message
    says which, in one line a skipped test can show."""


def cache_dir() -> Path:
    given = os.environ.get("CARDQ_KAFKA_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cardq" / "kafka" / KAFKA_VERSION


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    path = shutil.which("java")
    if path is None:
        raise KafkaUnavailable(
            "java is not installed (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return path


@functools.cache
def java_major(java: str) -> int:
    """The Java feature version; Kafka 4's broker needs 17 or newer (found: Debian's 17)."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaUnavailable(f"{java} -version failed: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if done.returncode != 0 or match is None:
        raise KafkaUnavailable(f"{java} -version did not say a version (exit {done.returncode})")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    if major < 17:
        raise KafkaUnavailable(
            f"Kafka {KAFKA_VERSION} needs Java 17 or newer; {java} is Java {major}"
        )
    return major


def ensure_libs(timeout: float = 900.0) -> Path:
    """The broker's jars, copied from Maven Central once per machine; returns ``libs/``."""
    root = cache_dir()
    libs = root / "libs"
    stamp = root / "complete"
    java_major(java_binary())  # jars are no use, and not worth fetching, without Java 17+
    if stamp.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            f"mvn is not installed, needed once to fetch Kafka {KAFKA_VERSION} from Maven "
            "Central (Debian: apt-get install maven)"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be assembling: wait for it
        if stamp.exists():
            return libs
        with tempfile.TemporaryDirectory(dir=root, prefix="assemble-") as work:
            (Path(work) / "pom.xml").write_text(_POM)
            out = Path(work) / "libs"
            try:
                done = subprocess.run(
                    [
                        mvn,
                        "-B",
                        "-q",
                        "dependency:copy-dependencies",
                        "-DincludeScope=runtime",
                        f"-DoutputDirectory={out}",
                    ],
                    cwd=work,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise KafkaUnavailable(
                    f"Maven did not fetch Kafka {KAFKA_VERSION} in {timeout:.0f} s"
                ) from None
            if done.returncode != 0:
                last = _last_error(done.stdout + done.stderr)
                raise KafkaUnavailable(
                    f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {done.returncode}): {last}"
                )
            if not (out / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
                raise KafkaUnavailable(
                    f"Maven finished but kafka_2.13-{KAFKA_VERSION}.jar is missing"
                )
            if libs.exists():
                shutil.rmtree(libs)
            out.rename(libs)
        stamp.write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
    return libs


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line] or lines
    return errors[0][:300] if errors else "no output"


def _java(libs: Path, work: Path, *args: str, heap: str) -> list[str]:
    log4j = work / "log4j2.properties"
    if not log4j.exists():
        log4j.write_text(_LOG4J2)
    return [
        java_binary(),
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def _write_properties(path: Path, props: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{k}={_escape(v)}\n" for k, v in props.items()))
    return path


def _format(libs: Path, work: Path, config: Path, scram: Mapping[str, str]) -> None:
    command = ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)]
    for name, password in scram.items():
        command += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    done = subprocess.run(
        _java(libs, work, *command, heap="256m"), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise KafkaUnavailable(
            f"formatting Kafka storage failed (exit {done.returncode}): "
            f"{_last_error(done.stdout + done.stderr)}"
        )


def class_archive() -> Path:
    java = Path(java_binary()).resolve()
    tag = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"classes-{tag}.jsa"


def storage_template(libs: Path) -> Path:
    """A formatted, empty log directory, made once per machine and copied for each broker.

    Formatting is a JVM start of its own (2-12 s on two busy cores). What it writes -
    ``meta.properties`` (cluster, node and directory ids) and ``bootstrap.checkpoint`` (the
    metadata version) - names no port or path, since the quorum is the static
    ``controller.quorum.voters``, so throwaway brokers can share it. SCRAM users are part of
    the bootstrap metadata: a broker with users is formatted afresh."""
    root = cache_dir()
    template = root / "storage-template"
    stamp = root / "storage-template.complete"
    if stamp.exists():
        return template
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return template
        with tempfile.TemporaryDirectory(dir=root, prefix="format-") as work:
            data = Path(work) / "data"
            config = _write_properties(
                Path(work) / "server.properties", KafkaBroker().properties(data)
            )
            _format(libs, Path(work), config, {})
            if template.exists():
                shutil.rmtree(template)
            data.rename(template)
        stamp.write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
    return template


def _escape(value: str) -> str:
    """A value for a Java properties file: PEM text keeps its line breaks as ``\\n``."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


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


class KafkaBroker:
    """``async with KafkaBroker() as broker: broker.bootstrap_servers``, like ``TansuBroker``."""

    def __init__(
        self,
        port: int | None = None,
        *,
        heap: str = "512m",
        sasl_ssl: SaslSsl | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port = free_port() if sasl_ssl else None
        self.sasl_ssl_bootstrap_servers = f"127.0.0.1:{self.sasl_ssl_port}" if sasl_ssl else None
        self.heap = heap
        self.extra_config = dict(config or {})
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
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
        config = _write_properties(work / "server.properties", self.properties(data))
        users = dict(self.sasl_ssl.users) if self.sasl_ssl else {}
        if users:
            _format(libs, work, config, users)
        else:
            shutil.copytree(storage_template(libs), data)
        return _java(
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
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

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
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise KafkaUnavailable(
                    f"the Kafka broker exited with code {self._process.returncode}: "
                    f"{self._log_tail()}"
                )
            if loop.time() > deadline:
                raise KafkaUnavailable(
                    f"the Kafka broker did not answer a metadata request in {timeout:.0f} s: "
                    f"{self._log_tail()}"
                )
            if await self._port_open() and await self._metadata_answers():
                return
            await asyncio.sleep(0.2)

    async def _port_open(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

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
        end_process(self._process, 10 if self._archive_being_written is None else 30)
        self._process = None
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
