"""The training options of `consortium federation train` and `consortium bench federated`
against the run's settings (consortium/learning/settings.py): every TrainOptions field is
an option `--field-name` with the field's default, range and help; no option exists that
neither the settings nor the command account for; every value reaches the run; a bad one
is refused, naming the option, before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.cli.bench import FEDERATED_DEFAULTS
from consortium.learning.coordinator import TrainRequest
from consortium.learning.policy import FeatureSpec, PolicyArtifact
from consortium.learning.settings import TrainOptions, config_key
from tests.learning.test_settings import out_of_range

SCHEMA: dict[str, dict[str, Any]] = TrainOptions.model_json_schema()["properties"]

# The options of each command that are not run settings, and what each is for.
TRAIN_OWN = {
    "out_path": "where the signed artifact goes (TrainRequest.out)",
    "simulate": "the engine",
    "orgs": "the organizations (RunSettings.min_nodes)",
    "version": "the policy's version (RunSettings.version)",
    "roster": "whose admin signs (TrainRequest.roster)",
    "admin_key": "the admin's key (TrainRequest.admin_key)",
    "history": "per-round metrics (RunSettings.history)",
    "data": "simulation: the record databases",
    "split": "simulation: the split to seed records from",
    "limit": "simulation: how many items to seed from",
    "superlink": "deployment: the SuperLink",
    "ca": "deployment: its CA",
    "insecure": "deployment: no TLS",
    "timeout": "deployment: how long to wait",
}
BENCH_OWN = {"orgs", "deployment", "limit", "as_json", "plot"}
# The settings `bench federated` varies (both strategies run; no differential privacy).
BENCH_TRAINING = {
    "rounds",
    "label",
    "local_steps",
    "learning_rate",
    "l2",
    "proximal_mu",
    "held_out",
}

# A value other than the default for every field (a new field must be added here).
NON_DEFAULT: dict[str, str] = {
    "rounds": "3",
    "strategy": "fedprox",
    "proximal_mu": "0.5",
    "local_steps": "4",
    "learning_rate": "0.05",
    "l2": "0.01",
    "label": "escalation_helps",
    "held_out": "0.3",
    "dp_noise": "1.5",
    "dp_clip": "0.5",
    "dp_delta": "1e-6",
}


def command(*path: str) -> click.Command:
    cmd: click.Command = typer.main.get_command(app)
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def options(cmd: click.Command) -> dict[str, click.Option]:
    return {p.name or "": p for p in cmd.params if isinstance(p, click.Option)}


def check_option(option: click.Option, field: str, default: object) -> None:
    prop = SCHEMA[field]
    assert option.opts == ["--" + config_key(field)], field
    assert option.default == default, field
    assert option.help == prop["description"], field
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    kind = option.type
    if low is None and high is None:
        expected = {"integer": click.INT, "number": click.FLOAT}.get(prop.get("type", ""))
        assert kind == (expected or click.STRING), field
        return
    assert isinstance(kind, click.IntRange if prop["type"] == "integer" else click.FloatRange)
    assert (kind.min, kind.min_open) == (low, "exclusiveMinimum" in prop), field
    assert (kind.max, kind.max_open) == (high, "exclusiveMaximum" in prop), field


def test_train_has_an_option_per_setting_and_no_other() -> None:
    assert set(NON_DEFAULT) == set(TrainOptions.model_fields)
    opts = options(command("federation", "train"))
    defaults = TrainOptions()
    for field in TrainOptions.model_fields:
        check_option(opts[field], field, getattr(defaults, field))
    assert set(opts) == set(TrainOptions.model_fields) | set(TRAIN_OWN)


def test_bench_federated_takes_its_training_options_from_the_settings() -> None:
    opts = options(command("bench", "federated"))
    assert set(opts) == BENCH_TRAINING | BENCH_OWN
    assert set(FEDERATED_DEFAULTS) <= BENCH_TRAINING
    defaults = TrainOptions.model_validate(FEDERATED_DEFAULTS)
    for field in BENCH_TRAINING:
        check_option(opts[field], field, getattr(defaults, field))


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainRequest]:
    """`federation train --simulate` with the run replaced: the requests it would run."""
    import consortium.cli.train
    import consortium.launch.flower

    requests: list[TrainRequest] = []

    def train_simulated(req: TrainRequest, orgs: int, data: Path) -> tuple[PolicyArtifact, bool]:
        requests.append(req)
        spec = FeatureSpec(names=["a"], mean=[0.0], scale=[1.0])
        return PolicyArtifact(version="t", features=spec, weights=[0.0], intercept=0.0), False

    monkeypatch.setattr(consortium.launch.flower, "train_simulated", train_simulated)
    monkeypatch.setattr(consortium.cli.train, "stop_on_sigterm", lambda: None)
    return requests


def train(tmp_path: Path, *args: str) -> Any:
    simulated = ["federation", "train", "--simulate", "--data", str(tmp_path), "--orgs", "2"]
    return CliRunner().invoke(app, [*simulated, "--out", str(tmp_path / "p.json"), *args])


def test_every_option_reaches_the_run(tmp_path: Path, trained: list[TrainRequest]) -> None:
    done = train(tmp_path)
    assert done.exit_code == 0, done.output
    assert trained[-1].options == TrainOptions()
    args = [a for f, v in NON_DEFAULT.items() for a in ("--" + config_key(f), v)]
    done = train(tmp_path, *args, "--version", "v2")
    assert done.exit_code == 0, done.output
    assert trained[-1].options == TrainOptions.model_validate(NON_DEFAULT)
    assert trained[-1].version == "v2"
    assert "3 rounds of fedprox across 2 organizations" in done.output


def bad_arguments() -> list[tuple[str, str]]:
    cases = [(f, str(v)) for f, prop in SCHEMA.items() for v in out_of_range(prop)]
    cases += [(f, "bogus") for f, prop in SCHEMA.items() if "enum" in prop]
    return cases


@pytest.mark.parametrize(("field", "value"), bad_arguments())
def test_a_bad_value_is_refused_naming_the_option(
    tmp_path: Path, trained: list[TrainRequest], field: str, value: str
) -> None:
    done = train(tmp_path, "--" + config_key(field), value)
    assert done.exit_code == 2 and "--" + config_key(field) in done.output
    assert "No such option" not in done.output
    assert not trained  # refused before the run


def test_bench_federated_runs_with_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import consortium.cli.bench
    import consortium.evaluation.federated_eval
    import consortium.evaluation.harness
    import consortium.evaluation.plots

    runs: list[TrainOptions] = []

    def evaluate_federated(*_: object, options: TrainOptions, **__: object) -> dict[str, Any]:
        runs.append(options)
        return {"_setup": {}, "_curves": {}}

    monkeypatch.setattr(
        consortium.evaluation.federated_eval, "evaluate_federated", evaluate_federated
    )
    monkeypatch.setattr(consortium.evaluation.harness, "split_data", lambda *_, **__: None)
    monkeypatch.setattr(consortium.evaluation.plots, "plot_federated", lambda _r, p: p)
    monkeypatch.setattr(consortium.cli.bench, "stop_on_sigterm", lambda: None)
    done = CliRunner().invoke(app, ["bench", "federated", "--json"])
    assert done.exit_code == 0, done.output
    assert runs[-1] == TrainOptions(rounds=30, label="escalation_helps")
    done = CliRunner().invoke(
        app, ["bench", "federated", "--json", "--learning-rate", "0.05", "--proximal-mu", "1"]
    )
    assert done.exit_code == 0, done.output
    assert (runs[-1].learning_rate, runs[-1].proximal_mu, runs[-1].rounds) == (0.05, 1.0, 30)
