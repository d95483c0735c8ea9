"""The Kafka launcher's refusals: where Java or Maven is missing or Maven fails, one line
saying which (it becomes the skip reason of every Kafka test), and no half-filled cache.

Maven itself is replaced here by a script: what is tested is how its failure is reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cardq.devtools.kafka import KafkaUnavailable, ensure_libs


def path_with(tmp_path: Path, programs: dict[str, str | None]) -> str:
    """A PATH holding only ``programs``: a real one (None) or a shell script (its body)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in programs.items():
        target = folder / name
        if script is None:
            real = shutil.which(name)
            if real is None:
                pytest.skip(f"{name} is not installed here")
            target.symlink_to(real)
        else:
            target.write_text(f"#!/bin/sh\n{script}\n")
            target.chmod(0o755)
    return str(folder)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CARDQ_KAFKA_CACHE", str(cache))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return cache


def test_without_java_it_says_so(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, {}))
    with pytest.raises(KafkaUnavailable, match=r"^java is not installed \(Debian: apt-get"):
        ensure_libs()


def test_without_maven_it_says_so(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, {"java": None}))
    with pytest.raises(KafkaUnavailable, match=r"^mvn is not installed, needed once to fetch"):
        ensure_libs()
    assert not (empty_cache / "complete").exists()


def test_a_maven_failure_is_reported_with_its_error_line(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = (
        'echo "[INFO] Scanning for projects..."\n'
        'echo "[ERROR] Failed to execute goal on project kafka-broker: Could not resolve '
        'dependencies: Network is unreachable"\nexit 1'
    )
    monkeypatch.setenv("PATH", path_with(tmp_path, {"java": None, "mvn": failing}))
    with pytest.raises(KafkaUnavailable) as caught:
        ensure_libs()
    message = str(caught.value)
    assert message.startswith("Maven could not fetch Kafka 4.1.1 (exit 1): [ERROR] Failed")
    assert "Network is unreachable" in message and "\n" not in message
    assert not (empty_cache / "complete").exists() and not (empty_cache / "libs").exists()


def test_a_finished_cache_is_used_without_maven(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (empty_cache / "libs").mkdir(parents=True)
    (empty_cache / "complete").write_text("kafka_2.13 4.1.1\n")
    monkeypatch.setenv("PATH", path_with(tmp_path, {"java": None}))
    assert ensure_libs() == empty_cache / "libs"  # no mvn on this PATH: not asked for


def test_an_old_java_is_named_with_its_version(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java8 = "echo 'openjdk version \"1.8.0_392\"' >&2"
    monkeypatch.setenv("PATH", path_with(tmp_path, {"java": java8}))
    with pytest.raises(KafkaUnavailable, match=r"needs Java 17 or newer; .*/java is Java 8$"):
        ensure_libs()
