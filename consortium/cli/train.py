"""`consortium federation seed-routing-data | train | superlink | supernode-key |
register-supernode | supernode`: the routing policy's training data and its federated
training with Flower. Wiring only; the pieces live in consortium/learning (the run's
options are generated from consortium/learning/settings.py: cli/options.py)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from consortium.cli.common import out, progress_bars, run, stop_on_sigterm
from consortium.cli.options import setting_options
from consortium.errors import ConfigError
from consortium.learning.settings import TrainOptions
from consortium.node.config import load_config

if TYPE_CHECKING:
    from consortium.learning.coordinator import TrainRequest
    from consortium.learning.policy import PolicyArtifact

_PART = re.compile(r"^(\d+)/(\d+)$")


def parse_part(value: str) -> tuple[int, int]:
    """ "I/N" (1-based) as (index, parts)."""
    m = _PART.match(value)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--part must be I/N with 1 <= I <= N, got {value!r}")
    return int(m.group(1)) - 1, int(m.group(2))


def seed_routing_data(
    config: Annotated[Path, typer.Option(help="This organization's node.toml.")],
    split: Annotated[str, typer.Option(help="Benchmark split to take records from.")] = (
        "arc_easy_dev"
    ),
    part: Annotated[
        str, typer.Option(help="Take part I of N of the split (I/N), as organization I would.")
    ] = "1/1",
    partition: Annotated[
        str, typer.Option(help="How the split is cut into parts: topic (non-IID) or iid.")
    ] = "topic",
    local: Annotated[str, typer.Option(help="The local model whose drafts make the features.")] = (
        "smollm2-135m"
    ),
    strong: Annotated[str, typer.Option(help="The peer's model (for the outcomes).")] = (
        "gemma3-270m"
    ),
    limit: Annotated[int | None, typer.Option(min=10, help="Only the first N items.")] = None,
) -> None:
    """Fill this organization's routing records from the benchmark caches (computed on
    first use), so a fresh federation can train its routing policy at once."""
    from consortium.evaluation.seeding import seed_node_records

    def go() -> None:
        cfg = load_config(config)
        index, parts = parse_part(part)
        if partition not in ("topic", "iid"):
            raise ConfigError(f"--partition must be topic or iid, got {partition!r}")
        how: Literal["topic", "iid"] = "topic" if partition == "topic" else "iid"
        seeded = seed_node_records(
            cfg, split, index, parts, limit, how, local, strong, progress_bars()
        )
        out.print(
            f"{cfg.node.org_id}: stored {seeded.stored} routing records from {split} "
            f"(part {index + 1}/{parts} by {how}; local answer right in {seeded.adequate}); "
            f"{seeded.total} records in {cfg.database_path}"
        )

    run(go)


@setting_options(TrainOptions)
def train(
    *,
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the policy artifact.")] = (
        Path("policy.json")
    ),
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Flower's simulation engine (Ray), in-process.")
    ] = False,
    orgs: Annotated[
        int, typer.Option(min=1, max=64, help="Organizations (all must take part).")
    ] = 3,
    # One option per field of TrainOptions (--rounds, --learning-rate, ...): cli/options.py.
    options: TrainOptions,
    version: Annotated[str, typer.Option(help="Policy version (default: fed-<time>).")] = "",
    roster: Annotated[
        Path | None,
        typer.Option(help="federation.toml: stamp the federation id and sign as its admin."),
    ] = None,
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
    history: Annotated[
        Path | None, typer.Option(help="Also write per-round metrics (JSON) here.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Simulation: a directory of org-<i>.sqlite3 record databases."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Simulation without --data: seed records from this split.")
    ] = "arc_easy_dev",
    limit: Annotated[
        int | None,
        typer.Option(min=10, help="Simulation without --data: only the split's first N items."),
    ] = None,
    superlink: Annotated[str, typer.Option(help="Deployment: the SuperLink's host:port.")] = "",
    ca: Annotated[
        Path | None, typer.Option(help="Deployment: CA certificate of the SuperLink.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Deployment: no TLS (loopback tests only).")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="Deployment: give up after.")] = 3600,
) -> None:
    """Train the routing policy across organizations with Flower and write the signed
    artifact: --simulate for development, or submit to the federation's SuperLink."""
    from consortium.learning.coordinator import TrainRequest, train_deployed

    def go() -> None:
        stop_on_sigterm()
        req = TrainRequest(
            out=out_path,
            options=options,
            version=version,
            history=history,
            roster=roster,
            admin_key=admin_key,
        )
        if simulate:
            if superlink:
                raise ConfigError("--simulate and --superlink exclude each other")
            artifact, signed = _train_simulated(req, orgs, data, split, limit)
        else:
            if not superlink:
                raise ConfigError("give --superlink HOST:PORT, or --simulate")
            if (ca is None) == (not insecure):
                raise ConfigError("give exactly one of --ca and --insecure")
            artifact, signed = train_deployed(req, orgs, superlink, ca, timeout)
        _report(artifact, signed, req, orgs)

    run(go)


def _train_simulated(
    req: TrainRequest, orgs: int, data: Path | None, split: str, limit: int | None
) -> tuple[PolicyArtifact, bool]:
    """A run on the simulation engine over `data`'s record databases, or over records
    seeded from `split` (by topic) in a temporary directory."""
    from consortium.evaluation.seeding import seed_simulation
    from consortium.launch.flower import train_simulated

    if data is not None:
        return train_simulated(req, orgs, data)
    with tempfile.TemporaryDirectory(prefix="consortium-sim-") as tmp:
        sizes = seed_simulation(
            Path(tmp), orgs, split, "smollm2-135m", "gemma3-270m", limit, progress_bars()
        )
        out.print(f"seeded {orgs} organizations from {split} by topic: {sizes}")
        return train_simulated(req, orgs, Path(tmp))


def _report(artifact: PolicyArtifact, signed: bool, req: TrainRequest, orgs: int) -> None:
    o = req.options
    auc = artifact.metrics.get("final_eval_auc", float("nan"))
    out.print(
        f"policy {artifact.version}: {o.rounds} rounds of {o.strategy} across {orgs} "
        f"organizations, held-out AUC {auc:.3f} (weighted over the organizations)"
    )
    if "dp_epsilon" in artifact.metrics:
        out.print(
            f"differential privacy per organization: epsilon "
            f"{artifact.metrics['dp_epsilon']:.2f} at delta {artifact.metrics['dp_delta']:g}"
            f" (noise multiplier {o.dp_noise}, clipping norm {o.dp_clip}, {o.rounds} rounds)"
        )
    out.print(
        f"{'signed for federation ' + artifact.federation_id if signed else 'UNSIGNED'}"
        f" -> {req.out.resolve()}"
    )


def supernode(
    config: Annotated[Path, typer.Option(help=r"This organization's node.toml (\[training]).")],
    superlink: Annotated[str, typer.Option(help="Override training.superlink.")] = "",
    port: Annotated[int | None, typer.Option(help="Override training.port.")] = None,
) -> None:
    """Run this organization's Flower SuperNode: its ClientApp trains on this node's
    routing records (node.toml's database) and sends only weights and metrics."""
    from consortium.learning.deployment import environment, supernode_command

    def go() -> list[str]:
        cfg = load_config(config)
        t = cfg.training
        if not t.insecure and not t.ca:
            raise ConfigError("set training.ca (or training.insecure = true for loopback tests)")
        return supernode_command(
            superlink=superlink or t.superlink,
            port=port or t.port,
            data_path=cfg.database_path.resolve(),
            ca=None if t.insecure else cfg.resolve(t.ca),
            auth_key=cfg.resolve(t.auth_key) if t.auth_key else None,
        )

    cmd = run(go)
    home = Path(tempfile.mkdtemp(prefix="consortium-flwr-"))
    os.execve(cmd[0], cmd, environment(home))


def supernode_key(
    config: Annotated[Path, typer.Option(help="This organization's node.toml.")],
) -> None:
    """Create this organization's SuperNode authentication key (training.auth_key, or
    keys/supernode.key); print the public key file to give the coordinator."""
    from consortium.learning.deployment import generate_supernode_key

    def go() -> None:
        cfg = load_config(config)
        path = cfg.resolve(cfg.training.auth_key or "keys/supernode.key")
        pub = generate_supernode_key(path)
        out.print(f"SuperNode key {path} (mode 0600); register {pub} with the SuperLink")

    run(go)


def superlink_cmd(
    dir: Annotated[Path, typer.Option("--dir", help="Directory for the SuperLink's state.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Its HTTPS port.")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    cert: Annotated[Path | None, typer.Option(help="TLS certificate.")] = None,
    key: Annotated[Path | None, typer.Option(help="TLS private key.")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate that signed it.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS (loopback tests only).")
    ] = False,
    supernode_auth: Annotated[
        bool,
        typer.Option(
            "--enable-supernode-auth", help="Admit only registered SuperNodes (needs TLS)."
        ),
    ] = False,
) -> None:
    """Run the coordinator's Flower SuperLink (ServerApp runs and SuperNode traffic)."""
    from consortium.learning.deployment import Tls, environment, superlink_command

    def go() -> list[str]:
        tls = None
        if insecure:
            if cert or key or ca:
                raise ConfigError("--insecure excludes --cert/--key/--ca")
        else:
            if not (cert and key and ca):
                raise ConfigError("give --cert, --key and --ca (or --insecure)")
            for p in (cert, key, ca):
                if not p.exists():
                    raise ConfigError("no such file", path=str(p))
            tls = Tls(cert, key, ca)
        dir.mkdir(parents=True, exist_ok=True)
        return superlink_command(
            port=port,
            host=host,
            database=(dir / "superlink.db").resolve(),
            tls=tls,
            supernode_auth=supernode_auth,
        )

    cmd = run(go)
    os.execve(cmd[0], cmd, environment(dir.resolve() / "flwr-home"))


def register_supernode(
    public_key: Annotated[Path, typer.Argument(help="The SuperNode's public key (.pub).")],
    superlink: Annotated[str, typer.Option(help="The SuperLink's host:port.")],
    ca: Annotated[Path, typer.Option(help="CA certificate of the SuperLink.")],
) -> None:
    """Admit an organization's SuperNode to the SuperLink (coordinator only)."""
    from consortium.learning.deployment import register_supernode as register
    from consortium.learning.deployment import write_connection

    def go() -> None:
        if not public_key.exists():
            raise ConfigError("no such public key", path=str(public_key))
        with tempfile.TemporaryDirectory(prefix="consortium-flwr-") as home:
            write_connection(Path(home), superlink, ca)
            node_id = register(public_key, Path(home))
        out.print(f"registered SuperNode {node_id} ({public_key})")

    run(go)
