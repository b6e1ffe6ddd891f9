"""Flower's processes on this machine: a SuperLink on loopback with SuperNodes
(`LocalDeployment`), and the simulation engine for the routing-policy run (`simulate`):
a SuperLink in simulation mode whose runtime runs `orgs` virtual SuperNodes (Ray), each
reading `data_dir/org-<partition-id>.sqlite3`, and the run submitted with `flwr run`
like a deployed one (the same ClientApp and ServerApp). For development, the benchmark
and the demo; organizations in production run SuperNodes next to their nodes (the
command lines are in consortium/learning/deployment.py).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

from consortium.errors import ConsortiumError
from consortium.launch.supervisor import NotReady, Supervisor, listening
from consortium.learning.coordinator import (
    TrainRequest,
    check_data_dir,
    finish,
    run_settings,
    unsigned_path,
)
from consortium.learning.deployment import (
    DeploymentError,
    environment,
    submit,
    superlink_command,
    supernode_command,
    write_connection,
)
from consortium.learning.policy import PolicyArtifact
from consortium.learning.settings import RunSettings


class TrainingError(ConsortiumError):
    """A federated training run did not complete."""


def simulate(
    settings: RunSettings, orgs: int, data_dir: Path, timeout: float = 3600
) -> RunSettings:
    """Runs to completion over data_dir's org-<i>.sqlite3 databases; the artifact is where
    the settings' `out` says. Returns the settings the run had."""
    settings = RunSettings.of(settings, data_dir=str(data_dir.resolve()), min_nodes=orgs)
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
        link.submit(settings, timeout)
    if out is not None and (not out.exists() or out.stat().st_mtime_ns == before):
        raise TrainingError("the simulated run ended without writing the policy")
    return settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalDeployment:
    """A SuperLink on loopback without TLS and either one SuperNode per record database
    or, with `simulated_supernodes`, Flower's simulation runtime in the SuperLink (the
    SuperNodes run in Ray). For the simulation engine, the benchmark and the demo; tests
    and operators of a real federation use the CLI with TLS. A context manager; every
    process is stopped on exit."""

    def __init__(
        self, directory: Path, data_paths: Sequence[Path] = (), simulated_supernodes: int = 0
    ) -> None:
        if bool(data_paths) == bool(simulated_supernodes):
            raise ValueError("give either data_paths or simulated_supernodes")
        self.data_paths = list(data_paths)
        self.simulated = simulated_supernodes
        self.directory = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.flwr_home = directory / "flwr-home"
        # Each Flower process leads its own process group: it starts flower-superexec.
        self._procs = Supervisor(directory, environment(self.flwr_home), new_session=True)

    def __enter__(self) -> LocalDeployment:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start_all()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_all(self) -> None:
        try:
            self._procs.start(
                "superlink",
                superlink_command(
                    port=self.port,
                    database=self.directory / "superlink.db",
                    simulation=bool(self.simulated),
                ),
                ready=listening(self.port),
                timeout=60,
            )
        except NotReady as e:
            if e.exited:
                raise DeploymentError(
                    f"the SuperLink exited (see {self.directory}/superlink.log)"
                ) from None
            raise DeploymentError("the SuperLink did not start listening within 60 s") from None
        for i, path in enumerate(self.data_paths):
            self._procs.start(
                f"supernode-{i}",
                supernode_command(
                    superlink=self.address, port=free_port(), data_path=path.resolve(), ca=None
                ),
            )
        write_connection(self.flwr_home, self.address, None, self.simulated)

    def submit(self, settings: RunSettings, timeout: float = 3600) -> None:
        submit(settings.to_config(), self.flwr_home, timeout)

    def __exit__(self, *exc: object) -> None:
        self._procs.stop()


def train_simulated(req: TrainRequest, orgs: int, data_dir: Path) -> tuple[PolicyArtifact, bool]:
    """One run on the simulation engine over data_dir's record databases, then the
    artifact stamped and signed like a deployed run's."""
    check_data_dir(data_dir, orgs)
    unsigned_path(req.out).unlink(missing_ok=True)
    simulate(run_settings(req, orgs), orgs, data_dir)
    return finish(req)


class FlowerEngines:
    """Both engines on this machine, for `consortium bench federated`."""

    def simulate(self, settings: RunSettings, orgs: int, data_dir: Path) -> RunSettings:
        return simulate(settings, orgs, data_dir)

    def deploy(self, settings: RunSettings, data_paths: Sequence[Path], work_dir: Path) -> None:
        with LocalDeployment(work_dir, data_paths=data_paths) as dep:
            dep.submit(settings)
