"""The one supervisor of the child processes Consortium starts on this machine (nodes,
Flower's SuperLink and SuperNodes, benchmark servers): start a command with its output in a
log file, wait until it is ready — a line it prints, or a condition such as a listening
port — with a deadline, and stop it: SIGTERM, then SIGKILL after a grace period.

A child waited on by a line prints that line on stdout and logs to stderr, which goes to
its log file; any other child's stdout and stderr both go to the log file. With
`new_session`, each child leads its own process group and signals go to the whole group
(a SuperLink and a SuperNode start flower-superexec children); otherwise only to the
child, which then also receives the terminal's Ctrl-C with its parent.

No orphans: a `Watcher` — a small process in its own session that reads a pipe from this
process until EOF — stops every child the supervisor started as soon as this process
ends, whatever it dies of (SIGKILL, SIGTERM without handler, a crash): its end of the pipe
closes with it. Unlike PR_SET_PDEATHSIG, which fires when the *thread* that started a
child exits, the pipe follows the process, and it works for any command, not only ours.

Standard library only, so the Flower deployment code below this package can use it too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


# The watcher's program: lines "PID STARTTIME GROUP" on stdin register a process; at EOF it
# sends SIGTERM to each registered process still running (the same process: /proc's start
# time must match, so a reused pid is never signalled), SIGKILL after the grace period.
_WATCHER = r"""
import os, signal, sys, time

grace = float(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_IGN)
watched = []
for line in sys.stdin.buffer:
    pid, start, group = line.split()
    watched.append((int(pid), start.decode(), group == b"1"))


def alive(pid, start):
    if start == "-":
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


def send(sig):
    for pid, start, group in watched:
        if alive(pid, start):
            try:
                os.killpg(pid, sig) if group else os.kill(pid, sig)
            except OSError:
                pass


send(signal.SIGTERM)
deadline = time.monotonic() + grace
while any(alive(pid, start) for pid, start, _ in watched) and time.monotonic() < deadline:
    time.sleep(0.1)
send(signal.SIGKILL)
"""


class Watcher:
    """Stops the processes registered with `watch` when this process ends (or `close`
    is called): SIGTERM, then SIGKILL after `grace_s`. Its own process starts with the
    first `watch`."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def watch(self, process: subprocess.Popen[Any], *, group: bool = False) -> None:
        """Registers `process` (with `group`: its whole process group, which it leads)."""
        line = f"{process.pid} {_start_time(process.pid)} {int(group)}\n".encode()
        with self._lock:
            if self._process is None:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _WATCHER, str(self.grace_s)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            assert self._process.stdin is not None
            self._process.stdin.write(line)
            self._process.stdin.flush()

    @property
    def pid(self) -> int | None:
        """The watcher process's pid, once it runs."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Ends the watch: every registered process still running is stopped; returns once
        the watcher has exited. A later `watch` starts a new watcher."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            process.wait()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_start_time(pid: int) -> str | None:
    """The start time of process `pid` (see `_start_time`; "-" where there is no /proc),
    or None when no such process runs (a zombie has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "-"
    return None if fields[0] == "Z" else fields[19]


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22), or
    "-" where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "-"


class Supervisor:
    """Child processes with their logs (default DIRECTORY/NAME.log) and one environment;
    stop() ends every child, SIGTERM to all first; if this process ends first, its watcher
    does. A context manager."""

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
        self.watcher = Watcher(grace_s)

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
        self.watcher.watch(process, group=self.new_session)
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
        self.watcher.close()

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
