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


def test_trust_defaults_match_the_engine(tmp_path: Path) -> None:
    from consortium.trust.reputation_engine import ReputationSettings

    cfg = load_config(write(tmp_path, "[node]\norg_id = 'a'\n"))
    assert cfg.trust.enabled
    assert cfg.trust.settings() == ReputationSettings()
    assert cfg.trust_path == tmp_path / "data" / "trust.sqlite3"


def test_trust_values_reach_the_settings(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[node]\norg_id = 'a'\n[trust]\nforgetting = 0.9\nmin_evidence = 3\n")
    )
    assert cfg.trust.settings().forgetting == 0.9
    assert cfg.trust.settings().min_evidence == 3


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("forgetting = 1.0", "trust.forgetting"),
        ("forgetting = 0", "trust.forgetting"),
        ("prior_good = 0", "trust.prior_good"),
        ("prior_bad = -1", "trust.prior_bad"),
        ("credible_level = 1.0", "trust.credible_level"),
        ("probation_bound = 1.5", "trust.probation_bound"),
        ("quarantine_bound = 0", "trust.quarantine_bound"),
        ("min_evidence = 0", "trust.min_evidence"),
        ("quarantine_s = 0", "trust.quarantine_s"),
        ("quarantine_growth = 0.5", "trust.quarantine_growth"),
        ("max_quarantined_fraction = 1.5", "trust.max_quarantined_fraction"),
        ("weight_canary = -1", "trust.weight_canary"),
        ("weight_report = 'strong'", "trust.weight_report"),
        ("enabled = 'yes please'", "trust.enabled"),
        ('peers = {globex = {exempt = "maybe"}}', "trust.peers.globex.exempt"),
        ("quarantine_bound = 0.8", "trust: quarantine_bound (0.8) must be below probation_bound"),
        ("max_quarantine_s = 60", "trust: max_quarantine_s (60.0) must be at least quarantine_s"),
    ],
)
def test_trust_bad_values_name_the_key(tmp_path: Path, line: str, expected: str) -> None:
    msg = error_for(write(tmp_path, f"[node]\norg_id = 'a'\n[trust]\n{line}\n"))
    assert "node.toml" in msg and expected in msg


def test_assessor_is_the_null_one_outside_a_federation_or_when_disabled(tmp_path: Path) -> None:
    from consortium.node.app import build_assessor
    from consortium.trust.reputation import NoOpAssessor
    from consortium.trust.reputation_engine import ReputationAssessor

    alone = load_config(write(tmp_path, "[node]\norg_id = 'a'\n"))
    assert isinstance(build_assessor(alone), NoOpAssessor)
    fed = "[node]\norg_id = 'a'\n[federation]\nroster = 'f.toml'\nadmin_key = 'admin.jwk'\n"
    assert isinstance(
        build_assessor(load_config(write(tmp_path, fed + "[trust]\nenabled = false\n"))),
        NoOpAssessor,
    )
    cfg = load_config(write(tmp_path, fed))
    assessor = build_assessor(cfg, members=["b", "c"])
    assert isinstance(assessor, ReputationAssessor)
    try:
        assert assessor.standing("b").state == "healthy"
        assert cfg.trust_path.stat().st_mode & 0o777 == 0o600
    finally:
        assessor.close()


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
    # The quorum: a majority of the members by default (2 of 2 here), at most all.
    assert group().groups["g"].answers_needed == 2
    assert group(quorum=1).groups["g"].answers_needed == 1
    with pytest.raises(ConfigError, match=r"groups\.g: .*quorum 3 exceeds the group's 2"):
        group(quorum=3)
    with pytest.raises(ConfigError, match=r"groups\.g\.quorum"):
        group(quorum=0)


FED = "[node]\norg_id = 'a'\n[federation]\nroster = 'f.toml'\nadmin_key = 'admin.jwk'\n"
MC_ROW = (
    '{"id": "c1", "question": "Which is a mammal?", "choices": ["shark", "whale"],'
    ' "answer": 1, "models": ["m"]}'
)


def test_canary_pool_is_loaded_relative_to_the_config(tmp_path: Path) -> None:
    from consortium.trust.canary_schedule import CanarySettings

    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / "canaries.jsonl").write_text(MC_ROW + "\n")
    cfg = load_config(write(tmp_path, FED + "[trust]\ncanaries = 'pools/canaries.jsonl'\n"))
    pool = cfg.canary_pool()
    assert pool is not None and [c.id for c in pool] == ["c1"]
    assert cfg.trust.canary_settings() == CanarySettings()  # the scheduler's defaults
    assert cfg.trust.settings().weight_canary > 0  # the canary keys stay out of reputations


def test_canary_settings_reach_the_scheduler(tmp_path: Path) -> None:
    from consortium.trust.canary_schedule import CanarySettings

    keys = (
        "canary_rate = 0.5\ncanary_background_interval_s = 60\ncanary_budget_tokens = 100\n"
        "canary_budget_period_s = 30\ncanary_repeat_window_s = 0\n"
    )
    cfg = load_config(write(tmp_path, FED + "[trust]\n" + keys))
    assert cfg.trust.canary_settings() == CanarySettings(
        rate=0.5,
        background_interval_s=60.0,
        budget_tokens=100,
        budget_period_s=30.0,
        repeat_window_s=0.0,
    )


def test_no_pool_no_canaries(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(MC_ROW + "\n")
    assert load_config(write(tmp_path, FED)).canary_pool() is None
    # Nothing would use one: no federation, or no reputations.
    alone = "[node]\norg_id = 'a'\n[trust]\ncanaries = 'c.jsonl'\n"
    assert load_config(write(tmp_path, alone)).canary_pool() is None
    off = FED + "[trust]\nenabled = false\ncanaries = 'c.jsonl'\n"
    assert load_config(write(tmp_path, off)).canary_pool() is None


def test_a_bad_pool_names_the_file_and_the_line(tmp_path: Path) -> None:
    pool = tmp_path / "canaries.jsonl"
    pool.write_text(
        MC_ROW + "\n" + '{"id": "c2", "question": "q", "choices": ["a", "b"], "answer": 5}\n'
    )
    cfg = load_config(write(tmp_path, FED + "[trust]\ncanaries = 'canaries.jsonl'\n"))
    with pytest.raises(ConfigError) as e:
        cfg.canary_pool()
    assert str(e.value).startswith(f"{pool}: line 2: ")
    assert "answer 5 is not an index" in str(e.value)


def test_a_missing_pool_is_named(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FED + "[trust]\ncanaries = 'nope.jsonl'\n"))
    with pytest.raises(ConfigError) as e:
        cfg.canary_pool()
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'}: trust.canaries: canary pool not found"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("canary_rate = 1.5", "trust.canary_rate"),
        ("canary_rate = -0.1", "trust.canary_rate"),
        ("canary_background_interval_s = 0", "trust.canary_background_interval_s"),
        ("canary_budget_tokens = -1", "trust.canary_budget_tokens"),
        ("canary_budget_period_s = 0", "trust.canary_budget_period_s"),
        ("canary_repeat_window_s = -1", "trust.canary_repeat_window_s"),
        ("canaries = 3", "trust.canaries"),
    ],
)
def test_canary_bad_values_name_the_key(tmp_path: Path, line: str, expected: str) -> None:
    msg = error_for(write(tmp_path, f"{FED}[trust]\n{line}\n"))
    assert "node.toml" in msg and expected in msg


def test_trust_peers_settings(tmp_path: Path) -> None:
    from consortium.node.config import parse_config

    base = {"node": {"org_id": "acme"}}
    cfg = parse_config(
        {**base, "trust": {"peers": {"globex": {"exempt": True, "canary_rate": 0.5}}}},
        path=tmp_path / "node.toml",
    )
    assert cfg.trust.settings().exempt == frozenset({"globex"})
    assert cfg.trust.canary_settings().rate_for("globex") == 0.5
    assert cfg.trust.canary_settings().rate_for("initech") == cfg.trust.canary_rate
    for bad, needle in (
        ({"Globex Corp": {}}, "not an organization id"),
        ({"globex": {"canary_rate": 2}}, "trust.peers.globex.canary_rate"),
        ({"globex": {"quarantine": False}}, "trust.peers.globex.quarantine"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_config({**base, "trust": {"peers": bad}}, path=tmp_path / "node.toml")


def test_audit_settings(tmp_path: Path) -> None:
    base = {"node": {"org_id": "acme"}}
    cfg = parse_config(base, path=tmp_path / "node.toml")
    assert cfg.audit.enabled and cfg.audit.checkpoint_every == 256
    assert cfg.audit.durable_against == "crash" and cfg.audit.witnessed_by == 0
    assert not cfg.audit.receipts
    assert cfg.audit_path == tmp_path / "data" / "audit.sqlite3"
    for bad, needle in (
        ({"checkpoint_every": 0}, "audit.checkpoint_every"),
        ({"checkpoint_interval_s": -1}, "audit.checkpoint_interval_s"),
        ({"durable_against": "disk"}, "audit.durable_against"),
        ({"witnesses": ["Globex Corp"]}, "audit.witnesses"),
        ({"witness_interval_s": -5}, "audit.witness_interval_s"),
        ({"witnessed_by": -1}, "audit.witnessed_by"),
        ({"receipt": True}, "audit.receipt"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_config({**base, "audit": bad}, path=tmp_path / "node.toml")


@pytest.mark.parametrize(
    "line",
    ["max_pending_requests = -1", "max_queue_wait_s = -0.5", "keep_alive_s = 0"],
)
def test_load_settings_name_the_key(tmp_path: Path, line: str) -> None:
    cfg = load_config(write(tmp_path, "[node]\norg_id = 'a'\n"))
    assert (cfg.server.max_pending_requests, cfg.server.max_queue_wait_s) == (128, 30.0)
    assert cfg.server.keep_alive_s == 75.0
    msg = error_for(write(tmp_path, f"[node]\norg_id = 'a'\n[server]\n{line}\n"))
    assert f"server.{line.split()[0]}" in msg
