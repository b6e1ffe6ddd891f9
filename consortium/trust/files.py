"""A node's data directory holds its tasks, replay cache, API key hashes and traces: it
is the organization's alone. `secure_directory` makes it mode 0700 and every file in it
0600 (also repairing a directory an older version left world-readable)."""

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
