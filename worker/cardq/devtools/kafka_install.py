"""Apache Kafka installed on this machine, once: the broker's jars from Maven Central, a
formatted storage template and a class-data archive, for :mod:`cardq.devtools.kafka`.

Why a module of its own: this is the slow, once-per-machine part (Maven, a JVM start to
format storage), shared under a file lock by every test session and benchmark; starting a
broker is then a copy and one JVM. What was found when each step was checked (OpenJDK
17.0.15, Maven 3.8.7, Debian 12, two cores shared with other work, so times vary by a factor
of two or three):

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
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from .process import ServerUnavailable

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


class KafkaUnavailable(ServerUnavailable):
    """Java or Maven is missing, Maven failed, or the broker did not come up."""


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


def _once_per_machine(name: str, stamp: str, make: Callable[[Path], Path]) -> Path:
    """``cache_dir()/name``, made by ``make(scratch folder)`` unless its stamp exists.

    Under the cache's file lock (another session may be making it: wait for it, then use
    theirs), in a scratch folder renamed into place, and trusted only once the stamp is
    written: a run killed halfway leaves nothing that is used."""
    root = cache_dir()
    target, done = root / name, root / stamp
    if done.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return target
        with tempfile.TemporaryDirectory(dir=root, prefix=f"{name}-") as work:
            made = make(Path(work))
            if target.exists():
                shutil.rmtree(target)
            made.rename(target)
        done.write_text(f"kafka_2.13 {KAFKA_VERSION}\n")
    return target


def ensure_libs(timeout: float = 900.0) -> Path:
    """The broker's jars, copied from Maven Central once per machine; returns ``libs/``."""
    java_major(java_binary())  # jars are no use, and not worth fetching, without Java 17+
    if (cache_dir() / "complete").exists():
        return cache_dir() / "libs"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            f"mvn is not installed, needed once to fetch Kafka {KAFKA_VERSION} from Maven "
            "Central (Debian: apt-get install maven)"
        )

    def fetch(work: Path) -> Path:
        (work / "pom.xml").write_text(_POM)
        out = work / "libs"
        command = [mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime"]
        try:
            done = subprocess.run(
                [*command, f"-DoutputDirectory={out}"],
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
            last = last_error(done.stdout + done.stderr)
            raise KafkaUnavailable(
                f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {done.returncode}): {last}"
            )
        if not (out / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            raise KafkaUnavailable(f"Maven finished but kafka_2.13-{KAFKA_VERSION}.jar is missing")
        return out

    return _once_per_machine("libs", "complete", fetch)


def last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line] or lines
    return errors[0][:300] if errors else "no output"


def java_command(libs: Path, work: Path, *args: str, heap: str) -> list[str]:
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


def write_properties(path: Path, props: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{k}={_escape(v)}\n" for k, v in props.items()))
    return path


def format_storage(libs: Path, work: Path, config: Path, scram: Mapping[str, str]) -> None:
    command = ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)]
    for name, password in scram.items():
        command += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    done = subprocess.run(
        java_command(libs, work, *command, heap="256m"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise KafkaUnavailable(
            f"formatting Kafka storage failed (exit {done.returncode}): "
            f"{last_error(done.stdout + done.stderr)}"
        )


def class_archive() -> Path:
    java = Path(java_binary()).resolve()
    tag = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"classes-{tag}.jsa"


def storage_template(libs: Path, properties: Callable[[Path], Mapping[str, str]]) -> Path:
    """A formatted, empty log directory, made once per machine and copied for each broker.

    Formatting is a JVM start of its own (2-12 s on two busy cores). What it writes -
    ``meta.properties`` (cluster, node and directory ids) and ``bootstrap.checkpoint`` (the
    metadata version) - names no port or path, since the quorum is the static
    ``controller.quorum.voters``, so throwaway brokers can share it: ``properties`` (a
    broker's, for a given log directory) may name any ports. SCRAM users are part of the
    bootstrap metadata: a broker with users is formatted afresh."""

    def make(work: Path) -> Path:
        data = work / "data"
        config = write_properties(work / "server.properties", properties(data))
        format_storage(libs, work, config, {})
        return data

    return _once_per_machine("storage-template", "storage-template.complete", make)


def _escape(value: str) -> str:
    """A value for a Java properties file: PEM text keeps its line breaks as ``\\n``."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
