"""A data directory whose disk a test can fill, free or make read-only.

As root (how these machines run the suite) the directory is a small tmpfs of its own:
`fill()` writes a file until the file system answers ENOSPC — the real error path of a
full disk, down to SQLite's SQLITE_FULL — and `free()` deletes it; `read_only()` remounts
it read-only, which Linux allows only while no file is open for writing (before a node
starts). Without root there is no mount: the fallback makes the directory's files
read-only by mode (chmod, the directory too), which stops every new file and connection
from writing, and sets
`PRAGMA query_only` on the connections given to `fill()`, which stops the open ones
(SQLITE_READONLY): the problem the node reports is then "read_only", as `problem` says.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from consortium.errors import StorageUnavailable
from consortium.storage.database import Database

ROOT = os.geteuid() == 0


class Disk:
    def __init__(self, path: Path, size_mb: int = 16) -> None:
        self.path = path
        self.mounted = False
        self._filler = path / "filler.bin"
        self._held: list[sqlite3.Connection] = []
        path.mkdir(parents=True, exist_ok=True)
        if ROOT:
            # Keep what is there (an initialised node's files) on the new file system.
            saved = path.with_name(path.name + ".saved")
            path.rename(saved)
            path.mkdir()
            _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path))
            self.mounted = True
            shutil.copytree(saved, path, dirs_exist_ok=True)
            shutil.rmtree(saved)

    @property
    def problem(self) -> str:
        """What the node should report while the disk is "full"."""
        return "disk_full" if ROOT else "read_only"

    def says(self, node: str = "") -> str:
        """The one line a client should read."""
        return str(StorageUnavailable(self.problem, node=node))

    def fill(self, connections: Iterable[sqlite3.Connection | Database] = ()) -> None:
        if ROOT:
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            block = b"\0" * (1 << 16)
            try:
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        if len(block) == 1:
                            break
                        block = block[: len(block) // 2]
            finally:
                os.close(fd)
            return
        for file in self._files():
            file.chmod(0o400)
        self.path.chmod(0o500)
        for conn in connections:
            if isinstance(conn, Database):
                conn.engine.dispose()  # its next connections open the read-only files
                continue
            conn.execute("PRAGMA query_only = ON")
            self._held.append(conn)

    def free(self) -> None:
        if ROOT:
            self._filler.unlink()
            return
        self.path.chmod(0o700)
        for file in self._files():
            file.chmod(0o600)
        for conn in self._held:
            conn.execute("PRAGMA query_only = OFF")
        self._held.clear()

    def free_if_full(self) -> None:
        """Frees the disk if a test left it full (so that its node can stop cleanly)."""
        if (ROOT and self._filler.exists()) or (not ROOT and self._held):
            self.free()

    def read_only(self) -> None:
        if ROOT:
            _run("mount", "-o", "remount,ro", str(self.path))
        else:
            self.path.chmod(0o500)

    def close(self) -> None:
        if self.mounted:
            _run("umount", "-l", str(self.path))
            self.mounted = False
        else:
            with contextlib.suppress(OSError):
                self.path.chmod(0o700)

    def _files(self) -> Iterator[Path]:
        return (p for p in self.path.rglob("*") if p.is_file())


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)
