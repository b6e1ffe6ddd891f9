"""Flower's simulation engine for the routing-policy run: a SuperLink in simulation mode
on loopback whose runtime runs `orgs` virtual SuperNodes (Ray), each reading
`data_dir/org-<partition-id>.sqlite3`, and the run submitted with `flwr run` like a
deployed one (the same ClientApp and ServerApp). For development and the benchmark;
organizations in production run SuperNodes (consortium/federation/deployment.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from consortium.errors import ConsortiumError
from consortium.federation.deployment import LocalDeployment
from consortium.federation.flower_app import RunSettings


class TrainingError(ConsortiumError):
    """A federated training run did not complete."""


def simulate(
    run_config: dict[str, Any], orgs: int, data_dir: Path, timeout: float = 3600
) -> RunSettings:
    """Runs to completion; the artifact is where run_config["out"] says."""
    config = {**run_config, "data-dir": str(data_dir.resolve()), "min-nodes": orgs}
    settings = RunSettings.from_config(config)  # bad settings fail here, before Flower starts
    missing = [i for i in range(orgs) if not (data_dir / f"org-{i}.sqlite3").exists()]
    if missing:
        raise TrainingError(
            f"no routing records for simulated organizations {missing} in {data_dir}"
        )
    out = Path(settings.out) if settings.out else None
    before = out.stat().st_mtime_ns if out is not None and out.exists() else None
    with (
        tempfile.TemporaryDirectory(prefix="consortium-sim-") as tmp,
        LocalDeployment(Path(tmp), simulated_supernodes=orgs) as link,
    ):
        link.submit(config, timeout)
    if out is not None and (not out.exists() or out.stat().st_mtime_ns == before):
        raise TrainingError("the simulated run ended without writing the policy")
    return settings
