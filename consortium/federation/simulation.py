"""Flower's simulation engine for the routing-policy run: the same ClientApp and
ServerApp as a deployment, with `orgs` virtual SuperNodes in Ray actors in this process's
machine, each reading `data_dir/org-<partition-id>.sqlite3`. For development and the
benchmark; organizations in production run SuperNodes (consortium/federation/deployment.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from consortium.errors import ConsortiumError
from consortium.federation.flower_app import RunSettings, make_client_app, make_server_app


class TrainingError(ConsortiumError):
    """A federated training run did not complete."""


def simulate(run_config: dict[str, Any], orgs: int, data_dir: Path) -> RunSettings:
    """Runs to completion; the artifact is where run_config["out"] says."""
    from flwr.simulation import run_simulation

    config = {**run_config, "data-dir": str(data_dir), "min-nodes": orgs}
    settings = RunSettings.from_config(config)  # bad settings fail here, before Ray starts
    missing = [i for i in range(orgs) if not (data_dir / f"org-{i}.sqlite3").exists()]
    if missing:
        raise TrainingError(
            f"no routing records for simulated organizations {missing} in {data_dir}"
        )
    out = Path(settings.out) if settings.out else None
    before = out.stat().st_mtime_ns if out is not None and out.exists() else None
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=make_server_app(config),
        client_app=make_client_app(config),
        num_supernodes=orgs,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": max(1, min(orgs, os.cpu_count() or 1))},
        },
    )
    if out is not None and (not out.exists() or out.stat().st_mtime_ns == before):
        raise TrainingError("the simulated run ended without writing the policy (see the log)")
    return settings
