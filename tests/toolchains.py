"""Node and Go for the tests that check artefacts written for other ecosystems.

The npm packages a test needs are pinned in a folder of the repository (``package.json`` +
``package-lock.json``) and installed with ``npm ci`` into a cache directory outside the work
tree, keyed by the lock file's digest: the repository never holds ``node_modules`` and a
second run installs nothing. Tests skip, with one line saying what is missing, on a machine
without the tool.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """``CARDQ_TEST_CACHE`` when set, else ``$XDG_CACHE_HOME/cardq-tests`` (``~/.cache``)."""
    given = os.environ.get("CARDQ_TEST_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cardq-tests"


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} on PATH (not found)")


def node_major() -> int:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().lstrip("v").split(".")[0])


def npm_install(folder: Path, *, copy: tuple[str, ...] = ()) -> Path:
    """``npm ci`` the folder's lock file into the cache; return the installed directory.

    ``copy`` names further files or folders of ``folder`` to place beside ``node_modules``
    (scripts, sources), refreshed on every call so an edit is always what runs.
    """
    require("node", "npm")
    lock = (folder / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (folder / "package.json").read_bytes()).hexdigest()[:16]
    target = cache_root() / f"{folder.name}-{digest}"
    marker = target / ".installed"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(folder / name, target / name)
        # --ignore-scripts: nothing of ours needs an install script, and some report home.
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {target} failed:\n{done.stdout}\n{done.stderr}")
        marker.touch()
    for name in copy:
        source = folder / name
        if source.is_dir():
            shutil.copytree(source, target / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target / name)
    return target
