"""`consortium node start`'s replica options: another data directory is refused (one
line, exit 2) where it would make a second node with the same keys and a state of its
own — SQLite storage; ports out of range are refused by the option itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "node", "start", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_another_data_directory_needs_shared_storage(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node]\norg_id = 'acme'\n[model]\nbackend = 'echo'\nname = 'echo'\n")
    result = start("--config", str(config), "--data-dir", str(tmp_path / "replica-2"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--data-dir: " in result.stderr and "replicas share their state" in result.stderr
    assert not (tmp_path / "replica-2").exists()


def test_ports_out_of_range_are_refused(tmp_path: Path) -> None:
    result = start("--config", str(tmp_path / "node.toml"), "--grpc-port", "70000")
    assert result.returncode == 2 and "--grpc-port" in result.stderr
