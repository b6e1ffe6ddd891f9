"""The one supervisor of the child processes Consortium starts on this machine (nodes,
Flower's SuperLink and SuperNodes, benchmark servers): start a command with its output in a
log file, wait until it is ready — a line it prints, or a condition such as a listening
port — with a deadline, and stop it: SIGTERM, then SIGKILL after a grace period.

A child waited on by a line prints that line on stdout and logs to stderr, which goes to
its log file; any other child's stdout and stderr both go to the log file. With
`new_session`, each child leads its own process group and signals go to the whole group
(a SuperLink and a SuperNode start flower-superexec children); otherwise only to the
child, which then also receives the terminal's Ctrl-C with its parent.

Standard library only, so the Flower deployment code below this package can use it too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from consortium.errors import ConsortiumError

GRACE_S = 15.0
POLL_S = 0.2


class NotReady(ConsortiumError):
    """A child exited, or was not ready by its deadline; it has been killed."""

    def __init__(self, child: Child, *, exited: bool, timeout: float) -> None:
        self.child = child
        self.exited = exited
        self.timeout = timeout
        what = "exited" if exited else f"was not ready within {timeout:.0f} s"
        super().__init__(f"{child.name} {what} (see {child.log_path})")


class Child:
    """One supervised process."""

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        log_path: Path,
        *,
        group: bool,
        grace_s: float,
    ) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.group = group
        self.grace_s = grace_s
        # The line that said the child is ready (waiting on a line), else "".
        self.ready_line = ""

    def signal(self, sig: signal.Signals) -> None:
        """To the child, or to its whole process group."""
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM, if it still runs."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)

    def wait(self, grace_s: float | None = None) -> int:
        """Its exit code; SIGKILL if it has not exited within the grace period."""
        try:
            self.process.wait(timeout=self.grace_s if grace_s is None else grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def stop(self, grace_s: float | None = None) -> int:
        """SIGTERM, then SIGKILL after the grace period; its exit code."""
        self.terminate()
        return self.wait(grace_s)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Supervisor:
    """Child processes with their logs (default DIRECTORY/NAME.log) and one environment;
    stop() ends every child, SIGTERM to all first. A context manager."""

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str] | None = None,
        *,
        new_session: bool = False,
        grace_s: float = GRACE_S,
    ) -> None:
        self.directory = directory
        self.env = dict(env) if env is not None else None
        self.new_session = new_session
        self.grace_s = grace_s
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log_path: Path | None = None,
        ready_line: str | None = None,
        ready: Callable[[], bool] | None = None,
        timeout: float = 60.0,
        poll_s: float = POLL_S,
    ) -> Child:
        """Starts `cmd`; with `ready_line`, returns once it printed a line starting so
        (in child.ready_line); with `ready`, once that condition holds (checked every
        poll_s). Raises NotReady, the child killed, if it exits first or the deadline
        passes."""
        log_path = log_path or self.directory / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(cmd),
                stdout=log if ready_line is None else subprocess.PIPE,
                stderr=subprocess.STDOUT if ready_line is None else log,
                env=self.env,
                start_new_session=self.new_session,
            )
        child = Child(name, process, log_path, group=self.new_session, grace_s=self.grace_s)
        self.children.append(child)
        deadline = time.monotonic() + timeout
        try:
            if ready_line is not None:
                child.ready_line = _wait_for_line(child, ready_line, deadline, timeout)
            if ready is not None:
                _wait_until(child, ready, deadline, timeout, poll_s)
        except NotReady:
            child.kill()
            raise
        return child

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to every child still running, then each waited for (SIGKILL after the
        grace period)."""
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.wait(grace_s)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def listening(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    """A readiness condition: something accepts TCP connections on host:port."""

    def check() -> bool:
        with socket.socket() as s:
            return s.connect_ex((host, port)) == 0

    return check


def _wait_for_line(child: Child, prefix: str, deadline: float, timeout: float) -> str:
    """The first line of the child's stdout that starts with `prefix` (without its line
    end); reads the pipe directly, so the deadline holds while the child prints nothing."""
    assert child.process.stdout is not None
    fd = child.process.stdout.fileno()
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotReady(child, exited=False, timeout=timeout)
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise NotReady(child, exited=True, timeout=timeout)
            pending += chunk


def _wait_until(
    child: Child, ready: Callable[[], bool], deadline: float, timeout: float, poll_s: float
) -> None:
    while True:
        if child.process.poll() is not None:
            raise NotReady(child, exited=True, timeout=timeout)
        if ready():
            return
        if time.monotonic() > deadline:
            raise NotReady(child, exited=False, timeout=timeout)
        time.sleep(poll_s)
