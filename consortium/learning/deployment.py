"""Flower's deployment engine for the routing-policy run: the coordinator's SuperLink,
each organization's SuperNode next to its node, and the submission of a run.

Flower 1.41 serves everything a SuperLink offers (fleet, control, ServerApp I/O) on one
HTTP(S) port; a SuperNode has its own local API port. Both start `flower-superexec` by
name, so the Python environment's bin directory goes first on PATH. Runtime dependency
installation stays off: the app's code is the installed consortium package. With TLS the
SuperLink presents a certificate from the federation's CA; with SuperNode
authentication it admits only SuperNodes whose public keys the coordinator registered
(`flwr supernode register`), each SuperNode proving possession of its EC private key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consortium.errors import ConfigError, ConsortiumError

CONNECTION = "consortium"


class DeploymentError(ConsortiumError):
    """A Flower process could not be started, or a run did not finish."""


def app_dir() -> Path:
    """The Flower app directory `flwr run` builds and submits (pyproject.toml only; the
    components are imported from the installed package)."""
    return Path(str(resources.files("consortium.learning") / "flower"))


def environment(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: this interpreter's bin first on PATH,
    Flower's state under flwr_home, no telemetry or update checks."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} is not installed (pip install flwr)")
    return found


@dataclass(frozen=True)
class Tls:
    """The SuperLink's certificate, key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def superlink_command(
    *,
    port: int,
    database: Path,
    host: str = "127.0.0.1",
    tls: Tls | None = None,
    supernode_auth: bool = False,
    simulation: bool = False,
) -> list[str]:
    """A SuperLink; with `simulation`, its runtime runs the SuperNodes itself (Ray)."""
    cmd = [
        executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        if supernode_auth:
            raise ConfigError("SuperNode authentication needs TLS on the SuperLink")
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile",
            str(tls.ca),
            "--ssl-certfile",
            str(tls.cert),
            "--ssl-keyfile",
            str(tls.key),
        ]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if simulation:
        cmd.append("--simulation")
    return cmd


def supernode_command(
    *,
    superlink: str,
    port: int,
    data_path: Path,
    ca: Path | None,
    auth_key: Path | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """A SuperNode whose ClientApp reads this organization's routing records."""
    if not superlink:
        raise ConfigError("no SuperLink address", key="training.superlink")
    cmd = [
        executable("flower-supernode"),
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        # Flower parses node config values as TOML: a quoted string.
        "--node-config",
        f"data-path={json.dumps(str(data_path))}",
    ]
    cmd += ["--root-certificates", str(ca)] if ca is not None else ["--insecure"]
    if auth_key is not None:
        if not auth_key.exists():
            raise ConfigError("no such SuperNode key", path=str(auth_key))
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def generate_supernode_key(path: Path) -> Path:
    """An EC P-384 key pair in OpenSSH format: the private key (mode 0600) at `path`, the
    public key at `path`.pub (what the coordinator registers). Existing keys are kept."""
    pub = path.with_name(path.name + ".pub")
    if path.exists():
        if not pub.exists():
            raise ConfigError("a private key without its .pub", path=str(path))
        return pub
    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return pub


def write_connection(
    flwr_home: Path, superlink: str, ca: Path | None, simulated_supernodes: int = 0
) -> Path:
    """The `flwr` CLI's connection to the SuperLink (FLWR_HOME/config.toml); for a
    simulation SuperLink, how many SuperNodes it simulates."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, Any] = {"address": superlink}
    if simulated_supernodes:
        conn["options"] = {"num-supernodes": simulated_supernodes}
    if ca is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca.resolve())
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return path


def _flwr(args: Sequence[str], flwr_home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [executable("flwr"), *args],
            env=environment(flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"flwr {args[0]} did not finish within {timeout:.0f} s") from None


def register_supernode(public_key: Path, flwr_home: Path, timeout: float = 60) -> int:
    """Registers a SuperNode's public key with the SuperLink; returns its node id."""
    done = _flwr(
        ["supernode", "register", str(public_key), CONNECTION, "--format", "json"],
        flwr_home,
        timeout,
    )
    out = done.stdout
    try:
        body = json.loads(out[out.index("{") :]) if "{" in out else {}
    except ValueError:
        body = {}
    if done.returncode != 0 or not body.get("success"):
        raise DeploymentError(f"registering {public_key} failed: {_tail(done)}")
    return int(body["node-id"])


def submit(
    run_config: dict[str, Any], flwr_home: Path, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    """`flwr run` of the routing app with these run-config overrides, streamed to the
    end of the run."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(tomli_w.dumps(run_config))
        overrides = f.name
    try:
        done = _flwr(
            ["run", str(app_dir()), CONNECTION, "--run-config", overrides, "--stream"],
            flwr_home,
            timeout,
        )
    finally:
        Path(overrides).unlink(missing_ok=True)
    if done.returncode != 0:
        raise DeploymentError(f"flwr run failed: {_tail(done)}")
    return done


def _tail(done: subprocess.CompletedProcess[str], lines: int = 6) -> str:
    text = (done.stderr or "") + (done.stdout or "")
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or (
        f"exit code {done.returncode}"
    )
