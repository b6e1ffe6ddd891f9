"""`[storage] url`: what it may say, read into a `Location`.

- `sqlite:///DIR` — SQLite files in DIR (relative to node.toml's directory;
  `sqlite:////abs/dir` absolute); `sqlite:///` alone is the node's data directory.
- `postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=...]` — one PostgreSQL database
  (`postgresql+psycopg://` is the same: psycopg 3 is the driver). A password in the URL
  is refused: node.toml is no place for a secret. It comes from `[storage]
  password_file` (mode 0600 or stricter) or from libpq's own sources (`PGPASSWORD`,
  `~/.pgpass`, `PGPASSFILE`), as for any PostgreSQL client.

The URL as shown in logs, errors and /healthz never carries a password (`Location.shown`).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from consortium.errors import ConfigError

KEY = "storage.url"
# The query parameters libpq takes that a node may pass through (TLS and identification);
# anything else is refused rather than silently ignored.
PG_PARAMETERS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "application_name",
        "target_session_attrs",
        "host",
        "port",
    }
)


@dataclass(frozen=True)
class Location:
    """Where the stores live: SQLite files in `directory`, or the PostgreSQL database
    `url` (no password in it; `password` separately, '' for libpq's own sources)."""

    kind: Literal["sqlite", "postgresql"]
    directory: Path | None = None
    url: URL | None = None
    password: str = ""

    @property
    def shown(self) -> str:
        """For logs, errors and /healthz: never a password."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.directory}"
        assert self.url is not None
        return self.url.render_as_string(hide_password=True).replace("+psycopg", "")


def parse_location(
    text: str, *, base_dir: Path, data_dir: Path, password_file: str = ""
) -> Location:
    """The Location `text` names (see the module docstring); ConfigError naming
    `storage.url` (or `storage.password_file`) for anything else."""
    text = text.strip()
    if not text:
        return Location("sqlite", directory=data_dir)
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"{_scrub(text)!r} is not a URL: sqlite:///DIR or postgresql://USER@HOST/DATABASE",
            key=KEY,
        ) from None
    driver = url.drivername
    if driver == "sqlite":
        if url.password or url.username or url.host or url.query:
            raise ConfigError("a sqlite URL names a directory only: sqlite:///DIR", key=KEY)
        if password_file:
            raise ConfigError("a password file is for PostgreSQL only", key="storage.password_file")
        if not url.database:
            return Location("sqlite", directory=data_dir)
        directory = Path(url.database).expanduser()
        return Location(
            "sqlite", directory=directory if directory.is_absolute() else base_dir / directory
        )
    if driver not in ("postgresql", "postgresql+psycopg"):
        raise ConfigError(
            f"unsupported database {driver!r}: sqlite:///DIR or postgresql://USER@HOST/DATABASE",
            key=KEY,
        )
    if url.password is not None:
        raise ConfigError(
            "the URL holds a password: node.toml is no place for it; put it in a 0600 file "
            "named by storage.password_file, or in PGPASSWORD / ~/.pgpass",
            key=KEY,
        )
    if not url.database:
        raise ConfigError("the URL names no database: postgresql://USER@HOST/DATABASE", key=KEY)
    unknown = sorted(set(url.query) - PG_PARAMETERS)
    if unknown:
        raise ConfigError(
            f"unsupported parameter(s) {', '.join(unknown)} (accepted: "
            f"{', '.join(sorted(PG_PARAMETERS))})",
            key=KEY,
        )
    password = _read_password(base_dir, password_file) if password_file else ""
    return Location("postgresql", url=url.set(drivername="postgresql+psycopg"), password=password)


def _read_password(base_dir: Path, name: str) -> str:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    key = "storage.password_file"
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", key=key) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {type(e).__name__}", key=key) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it",
            key=key,
        )
    password = text.strip("\r\n")
    if not password:
        raise ConfigError(f"{path} is empty", key=key)
    return password


def _scrub(text: str) -> str:
    """`text` with anything between '://' and '@' that looks like a password hidden."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else text
