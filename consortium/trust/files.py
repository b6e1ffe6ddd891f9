"""A node's data directory holds its tasks, replay cache, API key hashes and traces: it
is the organization's alone. `secure_directory` makes it mode 0700 and every file in it
0600 (also repairing a directory an older version left world-readable);
`write_private_file` writes one such file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def secure_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            Path(root, name).chmod(PRIVATE_DIR)
        for name in files:
            p = Path(root, name)
            try:
                if stat.S_ISREG(p.lstat().st_mode):
                    p.chmod(PRIVATE_FILE)
            except FileNotFoundError:  # e.g. a SQLite journal that just went away
                continue


def write_private_file(path: Path, data: bytes) -> None:
    """Writes `data` to `path` readable by its owner only (0600), atomically: a reader
    sees the old content or the new, never part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.chmod(PRIVATE_FILE)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
