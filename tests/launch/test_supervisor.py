"""The process supervisor with small Python children: readiness by a line and by a
condition, each with a deadline that holds while the child says nothing, a child that
exits before it is ready, and stopping (SIGTERM, then SIGKILL after the grace period, to
the child or its whole process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


# A launcher that starts two children (each printing READY, then sleeping) from a thread
# that has exited by the time it prints their pids: PR_SET_PDEATHSIG would fire there.
LAUNCHER = """
import sys, threading, time
from pathlib import Path
from consortium.launch.supervisor import Supervisor

sup = Supervisor(Path(sys.argv[1]), new_session=sys.argv[2] == "group", grace_s=5)
code = "import time; print('READY', flush=True); time.sleep(600)"
pids = []

def start():
    for name in ("a", "b"):
        pids.append(sup.start(name, [sys.executable, "-c", code], ready_line="READY").process.pid)

thread = threading.Thread(target=start)
thread.start()
thread.join()
print(*pids, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("sig", "session"),
    [(signal.SIGKILL, "child"), (signal.SIGTERM, "group")],
    ids=["sigkill", "sigterm-group"],
)
def test_children_stop_when_their_launcher_dies(
    tmp_path: Path, sig: signal.Signals, session: str
) -> None:
    """Whatever the launcher dies of, its children stop within seconds; a child started
    from a thread that has since exited lives as long as the launcher does."""
    launcher = subprocess.Popen(
        [*py(LAUNCHER), str(tmp_path), session], stdout=subprocess.PIPE, text=True
    )
    try:
        assert launcher.stdout is not None
        pids = [int(p) for p in launcher.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == -sig
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a child outlived its launcher"
            time.sleep(0.05)
    finally:
        launcher.kill()
        launcher.wait()


def test_the_watch_ends_with_the_supervisor(tmp_path: Path) -> None:
    """The watcher runs while the supervisor has children and exits when it stops."""
    sup = Supervisor(tmp_path)
    child = sup.start("child", py("import time; print('READY', flush=True); time.sleep(60)"),
                      ready_line="READY", timeout=30)  # fmt: skip
    watcher = sup.watcher.pid
    assert watcher is not None and _alive(watcher)
    assert child.stop() == -signal.SIGTERM
    sup.stop()
    assert sup.watcher.pid is None and not _alive(watcher)
