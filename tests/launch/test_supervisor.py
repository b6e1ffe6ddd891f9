"""The process supervisor with small Python children: readiness by a line and by a
condition, each with a deadline that holds while the child says nothing, a child that
exits before it is ready, and stopping (SIGTERM, then SIGKILL after the grace period, to
the child or its whole process group)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from consortium.launch.supervisor import NotReady, Supervisor, listening


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


def test_ready_line_is_returned_and_stderr_goes_to_the_log(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "print('starting', flush=True)\n"
        "print('to the log', file=sys.stderr, flush=True)\n"
        "print('READY port=1234', flush=True)\n"
        "time.sleep(60)\n"
    )
    with Supervisor(tmp_path) as sup:
        child = sup.start("child", py(code), ready_line="READY ", timeout=30)
        assert child.ready_line == "READY port=1234"
        assert child.process.poll() is None
        assert "to the log" in child.log() and "READY" not in child.log()
        assert child.stop() == -signal.SIGTERM


def test_child_that_exits_before_its_ready_line(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = "import sys; print('bad config', file=sys.stderr); sys.exit(2)"
    with pytest.raises(NotReady) as e:
        sup.start("child", py(code), ready_line="READY ", timeout=30)
    assert e.value.exited and "bad config" in e.value.child.log()
    assert e.value.child.process.returncode == 2


def test_line_deadline_holds_while_the_child_prints_nothing(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    started = time.monotonic()
    with pytest.raises(NotReady) as e:
        sup.start("silent", py("import time; time.sleep(60)"), ready_line="READY ", timeout=0.5)
    assert not e.value.exited and time.monotonic() - started < 30
    # Killed, not left behind.
    assert e.value.child.process.returncode == -signal.SIGKILL


def test_ready_condition_and_its_deadline(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = (
        f"import socket, time\ns = socket.create_server(('127.0.0.1', {port}))\ntime.sleep(60)\n"
    )
    with Supervisor(tmp_path) as sup:
        child = sup.start("server", py(serve), ready=listening(port), timeout=30)
        assert listening(port)() and child.process.poll() is None
        with pytest.raises(NotReady) as e:
            sup.start("never", py("import time; time.sleep(60)"), ready=lambda: False, timeout=0.3)
        assert not e.value.exited
        with pytest.raises(NotReady) as e:
            sup.start("gone", py("pass"), ready=lambda: False, timeout=30)
        assert e.value.exited
    assert child.process.returncode == -signal.SIGTERM


def test_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    code = IGNORE_TERM + "print('READY', flush=True); time.sleep(60)"
    sup = Supervisor(tmp_path, grace_s=0.5)
    child = sup.start("stubborn", py(code), ready_line="READY", timeout=30)
    assert child.stop() == -signal.SIGKILL


def test_stop_signals_the_whole_group_with_new_session(tmp_path: Path) -> None:
    """A child that starts its own child (as a SuperLink starts flower-superexec): both
    end when the supervisor stops."""
    grandchild = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(grandchild)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    with Supervisor(tmp_path, new_session=True) as sup:
        written = lambda: grandchild.exists() and bool(grandchild.read_text())  # noqa: E731
        child = sup.start("parent", py(code), ready=written, timeout=30, poll_s=0.05)
        pid = int(grandchild.read_text())
        assert os.getpgid(pid) == child.process.pid
    assert child.process.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the grandchild outlived the stop"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper, init here, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"
