"""`consortium bench federated` without Flower: the runs it hands the engines carry the
benchmark's options (consortium/learning/settings.py), and every alternative is scored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from consortium.evaluation.federated_eval import evaluate_federated
from consortium.learning.settings import RunSettings, TrainOptions
from tests.evaluation.conftest import Splits


class RecordingEngines:
    """Writes what a run's ServerApp would (a one-round history of zero weights)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, RunSettings, object]] = []

    def _history(self, settings: RunSettings) -> None:
        n = len(settings.feature_names)
        history = {
            "rounds_detail": {"1": {"seconds": 0.5, "params": [0.0] * (n + 1)}},
            "mean": [0.0] * n,
            "scale": [1.0] * n,
        }
        Path(settings.history).write_text(json.dumps(history))

    def simulate(self, settings: RunSettings, orgs: int, data_dir: Path) -> object:
        self.runs.append(("simulation", settings, (orgs, data_dir)))
        self._history(settings)
        return settings

    def deploy(self, settings: RunSettings, data_paths: Sequence[Path], work_dir: Path) -> None:
        self.runs.append(("deployment", settings, tuple(data_paths)))
        self._history(settings)


def test_the_runs_carry_the_benchmarks_options(splits: Splits, tmp_path: Path) -> None:
    options = TrainOptions(
        rounds=3, label="escalation_helps", learning_rate=0.05, l2=0.2, held_out=0.25
    )
    engines = RecordingEngines()
    result = evaluate_federated(
        splits.dev,
        splits.test,
        orgs=2,
        options=options,
        work_dir=tmp_path,
        engines=engines,
        deployment=True,
    )
    runs = [(engine, s.strategy, s.version) for engine, s, _ in engines.runs]
    assert runs == [
        ("simulation", "fedavg", "federated_fedavg"),
        ("simulation", "fedprox", "federated_fedprox"),
        ("deployment", "fedavg", "federated_fedavg_deployment"),
    ]
    orgs = tuple(sorted((tmp_path / "orgs").glob("org-*.sqlite3")))
    assert engines.runs[0][2] == (2, tmp_path / "orgs") and engines.runs[2][2] == orgs
    for _, settings, _ in engines.runs:
        # The options, except the strategy each run sets; the features of the records.
        assert settings.model_dump(include=set(TrainOptions.model_fields) - {"strategy"}) == (
            options.model_dump(exclude={"strategy"})
        )
        assert settings.min_nodes == 2 and len(settings.feature_names) > 12
        assert Path(settings.out).parent == tmp_path
    setup = result["_setup"]
    assert (setup["rounds"], setup["label"], setup["l2"]) == (3, "escalation_helps", 0.2)
    expected = {"federated_fedavg", "federated_fedprox", "federated_fedavg_deployment"}
    expected |= {"centralised", "local_org0", "local_org1", "random"}
    assert expected <= set(result)
    assert result["federated_fedavg"]["classifier_auc"] == 0.5  # zero weights: no signal
