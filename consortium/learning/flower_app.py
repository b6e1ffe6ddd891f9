"""The Flower app that trains the shared routing policy: a ClientApp that each
organization runs next to its node, on its own routing records, and a ServerApp the
coordinator runs, which aggregates (FedAvg, or FedProx for non-IID data) and writes the
policy artifact (which the coordinator then signs: consortium/learning/coordinator.py).
Only weights, feature statistics and metrics leave an organization; records never do.

One run: a `query` round collects every organization's feature count, sums and sums of
squares (standardisation), then `rounds` rounds of local training and held-out
evaluation. The same functions run under Flower's simulation engine and its deployment
engine (SuperLink + SuperNodes); `RunSettings` (consortium/learning/settings.py) carries
the run config, `records_path` says where a node's records are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from consortium.errors import ConfigError
from consortium.learning import optimiser as T
from consortium.learning.policy import PolicyArtifact
from consortium.learning.records import RoutingRecords
from consortium.learning.run import finish_run
from consortium.learning.settings import RunSettings

log = logging.getLogger(__name__)


# -- a node's records ----------------------------------------------------------------


def records_path(context: Context, settings: RunSettings) -> Path:
    """A SuperNode names its records in its node config (`data-path`); a simulated node
    finds them by its partition id under the run's `data-dir`."""
    node = context.node_config
    if "data-path" in node:
        return Path(str(node["data-path"]))
    if settings.data_dir and "partition-id" in node:
        return Path(settings.data_dir) / f"org-{int(node['partition-id'])}.sqlite3"
    raise ConfigError("this SuperNode's node config has no data-path")


# -- client --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalData:
    train_x: T.Array
    train_y: Any
    test_x: T.Array
    test_y: Any


def load_local(context: Context, settings: RunSettings) -> LocalData:
    path = records_path(context, settings)
    if not path.exists():
        raise ConfigError(f"no routing records at {path}", path=str(path))
    store = RoutingRecords(path)
    try:
        data = store.dataset(settings.feature_names, settings.label)
    finally:
        store.close()
    mask = T.held_out(data.record_ids, settings.held_out)
    return LocalData(data.x[~mask], data.y[~mask], data.x[mask], data.y[mask])


def _standardisation(msg: Message) -> tuple[T.Array, T.Array]:
    cfg = msg.content.config_records["config"]
    return np.asarray(cfg["mean"], dtype=np.float64), np.asarray(cfg["scale"], dtype=np.float64)


def _float(v: object) -> float:
    if not isinstance(v, int | float):
        raise ConfigError(f"expected a number, got {v!r}")
    return float(v)


def client_stats(msg: Message, context: Context, settings: RunSettings) -> Message:
    """This organization's feature statistics over its training part (aggregates only)."""
    local = load_local(context, settings)
    stats = T.FeatureStats.of(local.train_x)
    content = RecordDict(
        {
            "stats": ArrayRecord([stats.total, stats.squares]),
            "metrics": MetricRecord(
                {"num-examples": stats.count, "num-held-out": len(local.test_y)}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def client_train(msg: Message, context: Context, settings: RunSettings) -> Message:
    """Local gradient steps from the global weights (with FedProx's proximal term when the
    server sends proximal-mu)."""
    local = load_local(context, settings)
    mean, scale = _standardisation(msg)
    params = msg.content.array_records["arrays"].to_numpy_ndarrays()[0].astype(np.float64)
    mu = _float(msg.content.config_records["config"].get("proximal-mu", 0.0))
    xs = T.standardise(local.train_x, mean, scale)
    trained = T.train(params, xs, local.train_y, settings.optimiser(mu), params)
    metrics = MetricRecord(
        {
            "num-examples": len(local.train_y),
            # Differential privacy averages organizations with equal weights.
            "unit-weight": 1,
            "train-loss": T.loss(trained, xs, local.train_y),
        }
    )
    return Message(
        content=RecordDict({"arrays": ArrayRecord([trained]), "metrics": metrics}), reply_to=msg
    )


def client_evaluate(msg: Message, context: Context, settings: RunSettings) -> Message:
    """The global model on this organization's held-out records."""
    local = load_local(context, settings)
    mean, scale = _standardisation(msg)
    params = msg.content.array_records["arrays"].to_numpy_ndarrays()[0].astype(np.float64)
    xs = T.standardise(local.test_x, mean, scale)
    p = T.predict(params, xs)
    metrics = MetricRecord(
        {
            "num-examples": len(local.test_y),
            "unit-weight": 1,
            "eval-loss": T.loss(params, xs, local.test_y),
            "eval-auc": T.auc(local.test_y, p),
            "eval-accuracy": float(((p > 0.5).astype(int) == local.test_y).mean()),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app() -> ClientApp:
    app = ClientApp()

    def settings(context: Context) -> RunSettings:
        return RunSettings.from_config(dict(context.run_config))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_stats(msg, context, settings(context))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, settings(context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, settings(context))

    return app


# -- server --------------------------------------------------------------------------


def collect_stats(grid: Grid, settings: RunSettings) -> tuple[T.Array, T.Array, int]:
    """The query round: every organization's statistics, merged."""
    deadline = time.monotonic() + 600
    nodes = list(grid.get_node_ids())
    while len(nodes) < settings.min_nodes:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {len(nodes)} of {settings.min_nodes} organizations joined")
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    messages = [
        Message(content=RecordDict(), dst_node_id=node, message_type="query") for node in nodes
    ]
    replies = list(grid.send_and_receive(messages))
    parts = []
    for reply in replies:
        if reply.has_error():
            raise ConfigError(f"an organization failed the statistics round: {reply.error.reason}")
        total, squares = reply.content.array_records["stats"].to_numpy_ndarrays()
        count = int(_float(reply.content.metric_records["metrics"]["num-examples"]))
        parts.append(T.FeatureStats(count, total.astype(np.float64), squares.astype(np.float64)))
    mean, scale = T.merge_stats(parts)
    return mean, scale, sum(p.count for p in parts)


def make_strategy(
    settings: RunSettings,
) -> tuple[Strategy, DifferentialPrivacyServerSideFixedClipping | None]:
    """FedAvg or FedProx over every organization, wrapped in server-side differential
    privacy when the settings add noise (returned too, for the privacy spent)."""
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": settings.min_nodes,
        "min_evaluate_nodes": settings.min_nodes,
        "min_available_nodes": settings.min_nodes,
    }
    if settings.dp_noise > 0:
        common["weighted_by_key"] = "unit-weight"
    base: FedAvg = (
        FedProx(proximal_mu=settings.proximal_mu, **common)
        if settings.strategy == "fedprox"
        else FedAvg(**common)
    )
    if settings.dp_noise <= 0:
        return base, None
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=settings.dp_delta,
            population_size=settings.min_nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    dp = DifferentialPrivacyServerSideFixedClipping(
        base,
        noise_multiplier=settings.dp_noise,
        clipping_norm=settings.dp_clip,
        num_sampled_clients=settings.min_nodes,
        accountant=accountant,
    )
    return dp, dp


def run_server(grid: Grid, settings: RunSettings) -> PolicyArtifact:
    """The coordinator's side of a run: statistics, rounds, the artifact."""
    started = time.monotonic()
    mean, scale, examples = collect_stats(grid, settings)
    config = ConfigRecord({"mean": mean.tolist(), "scale": scale.tolist()})
    strategy, dp = make_strategy(settings)
    initial = np.zeros(len(settings.feature_names) + 1, dtype=np.float64)
    rounds: dict[int, dict[str, Any]] = {}
    last = [time.monotonic()]

    def round_done(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Called before round 1 and after each round: each round's duration and the
        # global weights after it (the history a benchmark evaluates per round).
        now = time.monotonic()
        if server_round > 0:
            rounds[server_round] = {
                "seconds": round(now - last[0], 3),
                "params": arrays.to_numpy_ndarrays()[0].astype(float).tolist(),
            }
        last[0] = now
        return None

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([initial]),
        num_rounds=settings.rounds,
        train_config=config,
        evaluate_config=config,
        evaluate_fn=round_done,
    )
    params = result.arrays.to_numpy_ndarrays()[0].astype(np.float64)
    privacy: dict[str, float] = {}
    spent = dp.privacy_spent() if dp is not None else None
    if spent is not None:
        privacy = {
            "dp_epsilon": round(spent.epsilon, 4),
            "dp_delta": spent.delta,
            "dp_noise_multiplier": settings.dp_noise,
            "dp_clipping_norm": settings.dp_clip,
        }
    return finish_run(
        settings,
        params,
        mean,
        scale,
        train_metrics={r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        evaluate_metrics={r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        examples=examples,
        seconds=time.monotonic() - started,
        rounds=rounds,
        privacy=privacy,
    )


def make_server_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = RunSettings.from_config(dict(context.run_config))
        artifact = run_server(grid, settings)
        log.info("routing policy %s written to %s", artifact.version, settings.out or "-")

    return app


# The components `flwr run` loads (consortium/learning/flower/pyproject.toml).
client_app = make_client_app()
server_app = make_server_app()
