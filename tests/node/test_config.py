from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.node.config import NodeConfig, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def error_for(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[node]\norg_id = "acme"\n'))
    assert cfg.node.org_id == "acme"
    assert cfg.server.max_message_bytes == 1024 * 1024
    assert cfg.model.backend == "llama_cpp" and cfg.model.name == "smollm2-135m"
    assert cfg.data_dir == tmp_path / "data"


def test_missing_file(tmp_path: Path) -> None:
    msg = error_for(tmp_path / "nope.toml")
    assert "nope.toml" in msg and "not found" in msg


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node\norg_id = 1"))
    assert "node.toml" in msg and "invalid TOML" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node]\ndisplay_name = 'x'\n"))
    assert "node.org_id: required" in msg


def test_missing_section(tmp_path: Path) -> None:
    assert "node: required" in error_for(write(tmp_path, "[server]\nhost = '127.0.0.1'\n"))


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[server]\ngrcp_port = 1\n"))
    assert "server.grcp_port: unknown key" in msg


def test_wrong_type_and_range(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[server]\ngrpc_port = 70000\n"))
    assert "server.grpc_port" in msg and "65535" in msg
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[model]\ntemperature = 'hot'\n"))
    assert "model.temperature" in msg


def test_bad_org_id(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node]\norg_id = 'Acme Corp'\n"))
    assert "node.org_id" in msg and "lowercase" in msg


def test_bad_enum(tmp_path: Path) -> None:
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[model]\nbackend = 'gpt'\n"))
    assert "model.backend" in msg


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "node.toml"
    p.write_bytes(b"\xff\xfe[node]")
    assert "UTF-8" in error_for(p)


def test_cascade_self_check_is_refused_on_a_node(tmp_path: Path) -> None:
    """A node computes no self-check score: the router would silently use the draft's
    confidence, so the config names the problem instead."""
    msg = error_for(
        write(tmp_path, "[node]\norg_id = 'a'\n[routing]\nrouter = 'cascade:self_check'\n")
    )
    assert "routing.router" in msg and "self-check" in msg
    ok = write(tmp_path, "[node]\norg_id = 'a'\n[routing]\nrouter = 'cascade:confidence'\n")
    assert load_config(ok).routing.router == "cascade:confidence"


def test_auth_and_retention_settings(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[node]\norg_id = 'a'\n"))
    assert cfg.auth.anonymous_loopback is False  # secure by default; init turns it on
    assert cfg.server.task_retention_days == 30
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[auth]\nanonymous = true\n"))
    assert "auth.anonymous" in msg and "unknown key" in msg
    msg = error_for(write(tmp_path, "[node]\norg_id = 'a'\n[server]\ntask_retention_days = -1\n"))
    assert "server.task_retention_days" in msg


def test_group_minimums_are_validated(tmp_path: Path) -> None:
    def group(**extra: object) -> NodeConfig:
        return parse_config(
            {"node": {"org_id": "acme"}, "groups": {"g": {"members": ["self", "x"], **extra}}},
            path=tmp_path / "node.toml",
        )

    assert (group().groups["g"].min_members, group().groups["g"].on_short) == (1, "local")
    with pytest.raises(ConfigError, match=r"groups\.g: .*min_members 3 exceeds the group's 2"):
        group(min_members=3)
    with pytest.raises(ConfigError, match=r"groups\.g\.min_members"):
        group(min_members=0)
    with pytest.raises(ConfigError, match=r"groups\.g\.on_short"):
        group(on_short="wait")
