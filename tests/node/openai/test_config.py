"""node.toml's [openai] section: defaults, and clear errors for a bad value or an
unknown key."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.node.config import load_config


def load(tmp_path: Path, section: str) -> object:
    path = tmp_path / "node.toml"
    path.write_text(f"[node]\norg_id = 'acme'\n[openai]\n{section}\n")
    return load_config(path)


def test_defaults_and_unlimited(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[node]\norg_id = 'acme'\n"))
    assert cfg.openai.requests_per_minute == 600 and cfg.openai.tokens_per_minute == 200_000
    unlimited = load_config(
        _write(tmp_path, "[node]\norg_id = 'acme'\n[openai]\nrequests_per_minute = 0\n")
    )
    assert unlimited.openai.requests_per_minute == 0


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("requests_per_minute = -1", "openai.requests_per_minute"),
        ("tokens_per_minute = 'lots'", "openai.tokens_per_minute"),
        ("rpm = 10", "openai.rpm: unknown key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, section)
    assert expected in str(e.value) and "node.toml" in str(e.value)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path
