"""The lock files the image installs from cover pyproject.toml and are current.

requirements.lock pins the runtime dependencies (and everything they pull in) with hashes;
requirements-build.lock pins the build backend. The Dockerfile installs with
``--require-hashes --no-deps``, so a dependency missing here would only show up as a broken
image: these checks catch a pyproject change made without ``make lock``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
REFRESH = "run `make lock` and commit the lock files"


@dataclass
class Pin:
    version: Version
    marker: Marker | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile/uv lock: ``name==version [; marker]``, ``--hash`` lines, ``# via`` notes."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip().rstrip("\\").strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            current = pins[canonicalize_name(requirement.name)] = Pin(
                Version(spec.version), requirement.marker
            )
        elif current is not None and line.startswith("--hash="):
            current.hashes.append(line.removeprefix("--hash="))
        elif (
            current is not None
            and (via := re.fullmatch(r"#\s+(?:via\s+)?(\S.*)", line))
            and via[1] != "via"
        ):
            current.via.append(via[1])
    return pins


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Pin]:
    return read_lock(ROOT / "requirements.lock")


def test_every_runtime_dependency_is_pinned_within_its_range(
    runtime_lock: dict[str, Pin],
) -> None:
    for text in PROJECT["project"]["dependencies"]:
        wanted = Requirement(text)
        pin = runtime_lock.get(canonicalize_name(wanted.name))
        assert pin, f"{wanted.name} is in pyproject.toml but not in requirements.lock: {REFRESH}"
        assert wanted.specifier.contains(pin.version, prereleases=True), (
            f"requirements.lock pins {wanted.name}=={pin.version}, outside {text!r}: {REFRESH}"
        )
        assert (pin.marker is None) == (wanted.marker is None), f"{wanted.name}: marker differs"


def test_lock_holds_nothing_pyproject_no_longer_asks_for(runtime_lock: dict[str, Pin]) -> None:
    """The direct pins are exactly pyproject's list, and every other pin is pulled in by one."""
    direct = {name for name, pin in runtime_lock.items() if "cardq (pyproject.toml)" in pin.via}
    declared = {canonicalize_name(Requirement(d).name) for d in PROJECT["project"]["dependencies"]}
    assert direct == declared, f"stale requirements.lock: {REFRESH}"
    for name, pin in runtime_lock.items():
        parents = {canonicalize_name(v) for v in pin.via if v != "cardq (pyproject.toml)"}
        assert pin.via, f"{name} is pinned but nothing asks for it: {REFRESH}"
        assert parents <= set(runtime_lock), f"{name} is pulled in by {parents - set(runtime_lock)}"


def test_every_pin_has_hashes(runtime_lock: dict[str, Pin]) -> None:
    build_lock = read_lock(ROOT / "requirements-build.lock")
    for name, pin in {**runtime_lock, **build_lock}.items():
        assert pin.hashes, f"{name} has no --hash: {REFRESH}"
        assert all(h.startswith("sha256:") for h in pin.hashes), name


def test_build_backend_is_pinned() -> None:
    build_lock = read_lock(ROOT / "requirements-build.lock")
    for text in PROJECT["build-system"]["requires"]:
        wanted = Requirement(text)
        pin = build_lock.get(canonicalize_name(wanted.name))
        assert pin, f"{wanted.name} (build-system.requires) is not in requirements-build.lock"
        assert wanted.specifier.contains(pin.version, prereleases=True), f"{text}: {REFRESH}"


def test_reader_sees_a_stale_lock(tmp_path: Path) -> None:
    """Guards the guard: a lock missing a dependency or carrying an extra one is caught."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "orjson==3.10.0 \\\n    --hash=sha256:00\n    # via cardq (pyproject.toml)\n"
        "idna==3.7 \\\n    --hash=sha256:11\n    # via\n    #   yarl\n    #   requests\n",
        encoding="utf-8",
    )
    pins = read_lock(lock)
    assert set(pins) == {"orjson", "idna"}
    assert pins["orjson"].via == ["cardq (pyproject.toml)"]
    assert pins["idna"].via == ["yarl", "requests"]
    assert pins["idna"].hashes == ["sha256:11"]
    with pytest.raises(AssertionError, match=r"not in requirements\.lock"):
        test_every_runtime_dependency_is_pinned_within_its_range(pins)
