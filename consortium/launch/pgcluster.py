"""Throwaway PostgreSQL clusters for tests, benchmarks and the replicas walkthrough: a
real server (Debian's `postgresql` package: `initdb`, `pg_ctl`, `postgres`), made in a
directory of its own, listening on 127.0.0.1 at a free port and on a unix socket in that
directory, password authentication (scram-sha-256) for every connection, no other
cluster touched. `stop` (fast shutdown) and `start` again keep the data: what a database
outage and its return look like to the nodes.

PostgreSQL refuses to run as root: as root the server's commands run as the `postgres`
system user (`runuser`), which owns the cluster's directory — so that directory's
parents must let it through (a `tempfile.mkdtemp()` under /tmp does; pytest's 0700
`tmp_path` does not); as anyone else, as that user.

    with PgCluster.create(tmp_path / "pg") as pg:
        url = pg.create_database("acme")       # postgresql://consortium@127.0.0.1:PORT/acme
        password = pg.password                 # what [storage] password_file holds
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from consortium.errors import ConsortiumError

SUPERUSER = "consortium"
START_TIMEOUT_S = 60.0


class ClusterError(ConsortiumError):
    """A throwaway PostgreSQL cluster could not be made or started."""

    exit_code = 9


def server_bin() -> Path:
    """The directory of the server's programs (initdb, pg_ctl, postgres)."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ClusterError(
        "PostgreSQL's server is not installed (no initdb): apt-get install postgresql "
        "(scripts/install-postgres.sh)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgCluster:
    """One cluster in `directory` (see the module docstring)."""

    directory: Path
    port: int
    password: str

    @classmethod
    def create(cls, directory: Path, *, port: int = 0) -> PgCluster:
        """initdb + start. The superuser `consortium` has a random password."""
        directory.mkdir(parents=True, exist_ok=True)
        cluster = cls(directory, port or free_port(), secrets.token_urlsafe(18))
        pwfile = directory / "superuser-password"
        pwfile.write_text(cluster.password + "\n")
        pwfile.chmod(0o600)
        cluster._own(directory)
        cluster._run(
            str(server_bin() / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{directory}'\nfsync = off\n"
                "synchronous_commit = on\nmax_connections = 200\n"
                "shared_buffers = 32MB\nlog_min_messages = warning\n"
            )
        cluster.start()
        return cluster

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The database's URL, without the password (as node.toml names it)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(
            str(server_bin() / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(START_TIMEOUT_S)),
            "start",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.accepting():
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL did not accept connections: see {self.log}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stops the server ("fast": connections cut, as an outage; "immediate": a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(server_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def accepting(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def create_database(self, name: str) -> str:
        """A new empty database; its URL (without the password)."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Runs one statement with psql as the superuser; its output (unaligned)."""
        psql = server_bin() / "psql"
        result = subprocess.run(
            [
                *(str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER),
                *("-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", statement),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.password},
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"psql: {result.stderr.strip()}")
        return result.stdout

    def destroy(self) -> None:
        with contextlib.suppress(ClusterError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- running as the server's user ------------------------------------------------

    def _own(self, directory: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (directory, *directory.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
            directory.chmod(0o700)

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise ClusterError(
                f"{Path(argv[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-1500:]}\n{tail}"
            )
