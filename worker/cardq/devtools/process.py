"""What every throwaway server of the devtools shares: a free loopback port, a child that
dies with us, a wait until it listens, and an end that never hangs.

Tansu, Apache Kafka and redis-server differ in what they are; how a test session starts and
ends them must not, or a fix made to one (a leaked broker after a killed run, a stop that
waits forever) is missing from the other two.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO


class ServerUnavailable(RuntimeError):
    """The server's program is missing or it did not come up; the message says which, in
    one line a skipped test can show."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask the kernel to SIGTERM the server when
    the process that started it dies, however it dies (SIGKILL included), so a killed
    test run or ``cardq dev`` never leaves a server behind."""
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


async def port_open(port: int) -> bool:
    """Whether something accepts a connection on the loopback port now."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class LocalServer:
    """A server process on a loopback port, started with :meth:`_spawn`, ended by :meth:`stop`.

    ``stop`` and a later start on the same object keep the port, so a test can take the
    server away and bring it back at the address its clients know.
    """

    #: How long ``stop`` waits for a clean shutdown before it kills.
    stop_grace_s = 5.0

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(
        self,
        command: Sequence[str],
        *,
        output: IO[bytes] | int = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """In a session of its own (a Ctrl-C for the tests is not one for the server), and
        ended by the kernel if we die (:func:`die_with_parent`)."""
        self._process = subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self._process

    def exit_code(self) -> int | None:
        """The code the server exited with, or ``None`` while it runs (or before a start)."""
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        end_process(self._process, self.stop_grace_s)
        self._process = None
