"""node.toml's [limits] section (every API's per-caller limits) and the [openai] keys it
replaced, still accepted: defaults, and clear errors for a bad value, an unknown key or
both spellings of one limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.node.config import load_config


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "node.toml"
    path.write_text(f"[node]\norg_id = 'acme'\n{text}\n")
    return load_config(path)


def test_defaults_and_unlimited(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[node]\norg_id = 'acme'\n"))
    assert cfg.limits.requests_per_minute == 600 and cfg.limits.tokens_per_minute == 200_000
    assert cfg.limits.concurrent_requests == 16
    unlimited = load_config(
        _write(tmp_path, "[node]\norg_id = 'acme'\n[limits]\nrequests_per_minute = 0\n")
    )
    assert unlimited.limits.requests_per_minute == 0


def test_the_old_openai_keys_still_set_the_limits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load(tmp_path, "[openai]\nrequests_per_minute = 7\ntokens_per_minute = 70")
    assert cfg.limits.requests_per_minute == 7 and cfg.limits.tokens_per_minute == 70  # type: ignore[attr-defined]
    assert "moved to [limits]" in caplog.text
    mixed = load(tmp_path, "[openai]\ntokens_per_minute = 70\n[limits]\nrequests_per_minute = 5")
    assert mixed.limits.requests_per_minute == 5 and mixed.limits.tokens_per_minute == 70  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[limits]\nrequests_per_minute = -1", "limits.requests_per_minute"),
        ("[limits]\ntokens_per_minute = 'lots'", "limits.tokens_per_minute"),
        ("[limits]\nconcurrent_requests = -2", "limits.concurrent_requests"),
        ("[openai]\nrequests_per_minute = -1", "limits.requests_per_minute"),
        ("[limits]\nrpm = 10", "limits.rpm: unknown key"),
        ("[openai]\nrpm = 10", "openai.rpm: unknown key"),
        (
            "[openai]\ntokens_per_minute = 1\n[limits]\ntokens_per_minute = 2",
            "openai.tokens_per_minute and limits.tokens_per_minute are both set",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert expected in str(e.value) and "node.toml" in str(e.value)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path
