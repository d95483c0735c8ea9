"""The container image, built with buildah and run with podman against real parts.

The image is built by ``make image`` (buildah, no Docker engine, no registry: the base is a
debootstrap stand-in built once per machine) and tagged by a hash of everything the build
reads, so it is rebuilt only when the Dockerfile, a lock file, pyproject.toml, README.md or
the worker's sources change. It then runs with its own entry point and default command, as a
cluster would run it: read-only root file system, host network, the config mounted at
/etc/cardq/config.yaml, against the session's Tansu broker and the simulator on loopback.

Needs root, buildah and podman (and debootstrap the first time): where one is missing the
test is skipped with one line saying which (``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, TansuBroker, produce
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/cardq-base:python3.11-bookworm"
REPOSITORY = "localhost/cardq"
TAG_PREFIX = "test-"
UID = 10001
DRAIN_GRACE_S = 5.0  # helpers.config_dict's delivery.drain_grace_s
TOPICS = Topics()


def build_inputs() -> list[Path]:
    """Every file the build reads: the tag is their hash, so any change rebuilds."""
    fixed = [
        "Dockerfile",
        ".dockerignore",
        "requirements.lock",
        "requirements-build.lock",
        "pyproject.toml",
        "README.md",
        "Makefile",
        "deploy/image/build.sh",
        "deploy/image/base-image.sh",
    ]
    sources = [
        p
        for p in (ROOT / "worker").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    return [ROOT / f for f in fixed] + sorted(sources)


def content_tag() -> str:
    digest = hashlib.sha256()
    for path in build_inputs():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{REPOSITORY}:{TAG_PREFIX}{digest.hexdigest()[:16]}"


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "image test skipped: needs root (buildah and podman with the system store)"
    for tool in ("buildah", "podman", "make"):
        if not shutil.which(tool):
            return f"image test skipped: {tool} is not installed (apt-get install {tool})"
    if not image_exists(BASE_IMAGE) and not shutil.which("debootstrap"):
        return "image test skipped: debootstrap is not installed (needed once for the base image)"
    return None


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", name],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        ).returncode
        == 0
    )


def prune_old_test_images(keep: str) -> None:
    """Drop this test's images older than a day, so the store does not grow per edit.

    A day, not "all but ours": another checkout's session may be using its own tag now.
    """
    listing = subprocess.run(
        ["buildah", "images", "--json"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if listing.returncode != 0 or not listing.stdout.strip():
        return
    cutoff = time.time() - 86_400
    for image in json.loads(listing.stdout):
        for name in image.get("names") or []:
            old = int(image.get("created") or cutoff) < cutoff
            if name.startswith(f"{REPOSITORY}:{TAG_PREFIX}") and name != keep and old:
                subprocess.run(
                    ["buildah", "rmi", name],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                )


@pytest.fixture(scope="module")
def cardq_image() -> Iterator[tuple[str, str]]:
    """The image's tag, and how it was had ("cached" or "built in N s")."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    tag = content_tag()
    if image_exists(tag):
        yield tag, "cached image reused"
        return
    started = time.monotonic()
    build = subprocess.run(
        ["make", "--no-print-directory", "image", f"IMAGE={tag}", f"BASE_IMAGE={BASE_IMAGE}"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    seconds = time.monotonic() - started
    assert build.returncode == 0, f"make image failed:\n{(build.stdout + build.stderr)[-4000:]}"
    prune_old_test_images(keep=tag)
    yield tag, f"image built in {seconds:.0f} s"


def podman_base() -> list[str]:
    """podman, with runc when installed: crun refuses hosts whose cgroups are in hybrid mode
    (v1 controllers next to a v2 one, as on the project's VMs); runc runs there."""
    return ["podman", "--runtime=runc"] if shutil.which("runc") else ["podman"]


def ulimits() -> list[str]:
    """Limits no higher than this process's: podman's defaults (a million open files) need
    CAP_SYS_RESOURCE to raise to, which a sandboxed root may not have."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 4096 if nproc_hard == resource.RLIM_INFINITY else min(nproc_hard, 4096)
    return [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]


async def podman(*args: str, user: str | None = None) -> tuple[int, str]:
    """A podman command, awaited without blocking the loop the simulator answers on."""
    base = podman_base()
    command = [*base, *args]
    if user is not None:
        command[len(base) + 1 : len(base) + 1] = ["--user", user]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(1800)
async def test_image_delivers_as_uid_10001_on_a_read_only_root_and_drains_on_sigterm(
    cardq_image: tuple[str, str],
    broker: TansuBroker,
    sim: Simulator,
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    tag, how = cardq_image
    record_property("image", how)
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    config = helpers.write_config(tmp_path / "config.yaml", broker.bootstrap_servers, sim.base_url)
    config.chmod(0o644)  # read by uid 10001 through the bind mount
    name = f"cardq-test-{uuid.uuid4().hex[:12]}"
    env = [f"--env={key}={value}" for key, value in helpers.CREDENTIALS.items()]
    log = tmp_path / "container.log"
    with log.open("wb") as sink:
        container = await asyncio.create_subprocess_exec(
            *podman_base(),
            "run",
            "--rm",
            f"--name={name}",
            "--network=host",
            "--read-only",
            *ulimits(),
            f"--volume={config}:/etc/cardq/config.yaml:ro",
            *env,
            tag,  # the image's own entry point and command: cardq run --config ...
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with ResultCollector(broker.bootstrap_servers) as results:
            await produce(
                broker.bootstrap_servers,
                TOPICS.requests,
                [helpers.hook("img-1", text="from the container")],
            )
            await results.wait_for_count(1, timeout=90)
        (result,) = results.by_request()["img-1"]
        assert result["status"] == "delivered", result
        assert [a.body["content"]["text"] for a in sim.accepted] == ["from the container"]

        # The process (PID 1 of the container: the entry point, no shell) is uid 10001.
        code, status = await podman("exec", name, "cat", "/proc/1/status")
        assert code == 0, status
        uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
        assert uids and uids[1].split() == [str(UID)] * 4, status
        assert "cardq" in (await podman("exec", name, "cat", "/proc/1/cmdline"))[1]

        # Read-only root: even root inside the container cannot write there, and the
        # kernel says why; /tmp (a tmpfs) stays writable for the worker's user.
        code, out = await podman("exec", name, "touch", "/etc/cardq/probe", user="0")
        assert code != 0 and "Read-only file system" in out, out
        code, mounts = await podman("exec", name, "cat", "/proc/self/mountinfo")
        root = next(line.split() for line in mounts.splitlines() if line.split()[4] == "/")
        assert "ro" in root[5].split(","), root
        code, out = await podman("exec", name, "touch", "/tmp/probe")
        assert code == 0, out

        code, out = await podman("kill", "--signal=TERM", name)
        assert code == 0, out
        signalled = time.monotonic()
        exit_code = await asyncio.wait_for(container.wait(), timeout=DRAIN_GRACE_S + 30)
        stopped_in = time.monotonic() - signalled
        assert exit_code == 0, log.read_text(errors="replace")[-3000:]
        assert stopped_in <= DRAIN_GRACE_S, f"SIGTERM took {stopped_in:.1f} s"
        record_property("image", f"{how}; SIGTERM to exit 0 in {stopped_in:.1f} s")
    finally:
        if container.returncode is None:
            await podman("rm", "--force", "--time=0", name)
            await container.wait()
