"""The training run's one settings source: defaults, the run config both ways, a refusal
naming the key for every bad value, and the Flower app's pyproject.toml agreeing with it."""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.learning import optimiser as T
from consortium.learning.deployment import app_dir
from consortium.learning.settings import RunSettings, TrainOptions, config_key

NAMES = ("a", "b", "c")
CONFIG: dict[str, Any] = {"feature-names": json.dumps(list(NAMES))}


def test_defaults_are_the_documented_ones() -> None:
    assert TrainOptions().model_dump() == {
        "rounds": 10,
        "strategy": "fedavg",
        "proximal_mu": 0.1,
        "local_steps": 10,
        "learning_rate": 0.1,
        "l2": 0.1,
        "label": "local_correct",
        "held_out": 0.2,
        "dp_noise": 0.0,
        "dp_clip": 1.0,
        "dp_delta": 1e-5,
    }
    s = RunSettings.from_config(CONFIG)
    assert s.feature_names == NAMES and s.min_nodes == 1 and s.normalisation == "none"
    assert (s.out, s.history, s.version, s.federation_id, s.data_dir) == ("", "", "", "", "")
    assert s.model_dump(include=set(TrainOptions.model_fields)) == TrainOptions().model_dump()


def test_the_optimisers_settings_come_from_the_options() -> None:
    options = TrainOptions(local_steps=7, learning_rate=0.05, l2=0.3, proximal_mu=2.0)
    assert options.optimiser() == T.TrainSettings(7, 0.05, 0.3, 0.0)
    # FedProx's term is what the server sends with each round, not the option itself.
    assert options.optimiser(proximal_mu=0.5).proximal_mu == 0.5


def non_default() -> RunSettings:
    return RunSettings(
        rounds=3,
        strategy="fedprox",
        proximal_mu=0.5,
        local_steps=4,
        learning_rate=0.05,
        l2=0.0,
        label="escalation_helps",
        held_out=0.3,
        dp_noise=1.5,
        dp_clip=0.5,
        dp_delta=1e-6,
        feature_names=NAMES,
        min_nodes=3,
        out="/tmp/p.json",
        history="/tmp/h.json",
        version="v9",
        federation_id="fed",
        embedding_model="minilm",
        normalisation="tokens",
        data_dir="/tmp/data",
    )


def test_to_config_and_from_config_are_inverse() -> None:
    settings = non_default()
    config = settings.to_config()
    # Flower's run config: kebab-case keys, feature names as a JSON list, plain values.
    assert set(config) == {config_key(f) for f in RunSettings.model_fields}
    assert config["feature-names"] == '["a", "b", "c"]' and config["learning-rate"] == 0.05
    assert all(isinstance(v, int | float | str) for v in config.values())
    assert RunSettings.from_config(config) == settings
    assert RunSettings.from_config(config).to_config() == config


def test_a_partial_config_takes_the_defaults_and_values_are_converted() -> None:
    s = RunSettings.from_config({**CONFIG, "rounds": "3", "dp-delta": 1e-4, "version": 5})
    assert s.rounds == 3 and s.dp_delta == 1e-4 and s.version == "5"
    assert s.learning_rate == TrainOptions().learning_rate


def test_of_fills_in_and_replaces_options() -> None:
    options = TrainOptions(rounds=4, strategy="fedavg")
    s = RunSettings.of(options, strategy="fedprox", feature_names=NAMES, min_nodes=2)
    assert (s.rounds, s.strategy, s.min_nodes, s.feature_names) == (4, "fedprox", 2, NAMES)
    with pytest.raises(ConfigError, match="run config min-nodes: at least 1, got 0") as e:
        RunSettings.of(options, feature_names=NAMES, min_nodes=0)
    assert e.value.key == "run config min-nodes"


def out_of_range(prop: dict[str, Any]) -> list[object]:
    """Values just outside a numeric field's range, from its JSON schema."""
    bad: list[object] = []
    if "minimum" in prop:
        bad.append(prop["minimum"] - 1)
    if "exclusiveMinimum" in prop:
        bad.append(prop["exclusiveMinimum"])
    if "maximum" in prop:
        bad.append(prop["maximum"] + 1)
    if "exclusiveMaximum" in prop:
        bad.append(prop["exclusiveMaximum"])
    return bad


def bad_values() -> list[tuple[str, object]]:
    """For every field: a value of the wrong type, values outside its range or choices."""
    cases: list[tuple[str, object]] = []
    for field, prop in RunSettings.model_json_schema()["properties"].items():
        key = config_key(field)
        if prop.get("type") == "integer":
            cases += [(key, "many"), (key, 2.5)]
        elif prop.get("type") == "number":
            cases += [(key, "much"), (key, math.nan), (key, math.inf)]
        elif "enum" in prop:
            cases += [(key, "whatever"), (key, 3)]
        elif prop.get("type") == "string":
            cases += [(key, ["a", "list"])]
        cases += [(key, v) for v in out_of_range(prop)]
    cases += [("feature-names", v) for v in ("[]", "not json", '["a", 1]', '{"a": 1}', 7)]
    return cases


@pytest.mark.parametrize(("key", "value"), bad_values())
def test_every_bad_value_is_refused_naming_its_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        RunSettings.from_config({**CONFIG, key: value})
    assert e.value.key == f"run config {key}"
    assert str(e.value).startswith(f"run config {key}: ")


def test_the_messages_say_what_is_expected() -> None:
    def refusal(**values: object) -> str:
        config = {**CONFIG, **{k.replace("_", "-"): v for k, v in values.items()}}
        with pytest.raises(ConfigError) as e:
            RunSettings.from_config(config)
        return str(e.value)

    assert refusal(strategy="fedsgd") == "run config strategy: fedavg or fedprox, got 'fedsgd'"
    assert refusal(rounds="many") == "run config rounds: expected int, got 'many'"
    assert refusal(rounds=0) == "run config rounds: at least 1, got 0"
    assert refusal(dp_clip=0.0) == "run config dp-clip: greater than 0.0, got 0.0"
    assert refusal(held_out=1.0) == "run config held-out: less than 1.0, got 1.0"
    assert refusal(learning_rate=math.inf).startswith("run config learning-rate: expected a fin")
    assert "local_correct or escalation_helps" in refusal(label="whatever")
    assert "expected a JSON list of strings" in refusal(feature_names="not json")
    with pytest.raises(ConfigError, match="run config feature-names: required"):
        RunSettings.from_config({})


def test_an_unknown_key_is_refused() -> None:
    # A misspelt key would otherwise silently leave the setting at its default.
    with pytest.raises(ConfigError, match="run config learning_rate: not a setting") as e:
        RunSettings.from_config({**CONFIG, "learning_rate": 0.5})
    assert e.value.key == "run config learning_rate"


def flower_app_config() -> dict[str, Any]:
    with (app_dir() / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    return config


def test_the_flower_apps_config_is_the_settings_with_their_defaults() -> None:
    app = flower_app_config()
    assert set(app) == {config_key(f) for f in RunSettings.model_fields}
    # The one required setting holds a placeholder there, which a run refuses...
    with pytest.raises(ConfigError, match="run config feature-names"):
        RunSettings.from_config(app)
    # ...and every other key holds the settings' default.
    filled = {**app, **CONFIG}
    assert RunSettings.from_config(filled).to_config() == filled
