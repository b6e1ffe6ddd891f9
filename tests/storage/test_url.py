"""[storage] url and password_file: what a node accepts, and a clear error naming the key
for everything else — never echoing a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.storage.url import parse_location


def test_sqlite_defaults_to_the_data_directory(tmp_path: Path) -> None:
    for text in ("", "sqlite:///"):
        location = parse_location(text, base_dir=tmp_path, data_dir=tmp_path / "data")
        assert location.kind == "sqlite" and location.directory == tmp_path / "data"
    rel = parse_location("sqlite:///state", base_dir=tmp_path, data_dir=tmp_path / "d")
    assert rel.directory == tmp_path / "state"
    absolute = parse_location("sqlite:////srv/acme", base_dir=tmp_path, data_dir=tmp_path)
    assert absolute.directory == Path("/srv/acme")


def test_postgresql_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    location = parse_location(
        "postgresql://acme@db.example:5433/consortium?sslmode=verify-full",
        base_dir=tmp_path,
        data_dir=tmp_path,
        password_file="pw",
    )
    assert location.kind == "postgresql" and location.password == "s3cret-value"
    assert location.url is not None and location.url.drivername == "postgresql+psycopg"
    assert location.shown == "postgresql://acme@db.example:5433/consortium?sslmode=verify-full"
    assert "s3cret" not in repr(location.shown)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mysql://acme@db/consortium", "unsupported database 'mysql'"),
        ("postgresql://acme:hunter2@db/consortium", "holds a password"),
        ("postgresql://acme@db", "names no database"),
        ("postgresql://acme@db/c?sslmode=require&evil=1", "unsupported parameter(s) evil"),
        ("sqlite://user@host/dir", "names a directory only"),
        ("::not a url::", "is not a URL"),
        ("postgresql+asyncpg://acme@db/c", "unsupported database"),
    ],
)
def test_bad_urls_name_the_key_and_never_echo_a_password(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_location(text, base_dir=tmp_path, data_dir=tmp_path)
    assert str(e.value).startswith("storage.url: ") and words in str(e.value)
    assert "hunter2" not in str(e.value)


def test_password_file_problems(tmp_path: Path) -> None:
    url = "postgresql://acme@db/consortium"
    with pytest.raises(ConfigError, match=r"storage.password_file: .*missing does not exist"):
        parse_location(url, base_dir=tmp_path, data_dir=tmp_path, password_file="missing")
    loose = tmp_path / "loose"
    loose.write_text("pw\n")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 644\): chmod 600"):
        parse_location(url, base_dir=tmp_path, data_dir=tmp_path, password_file="loose")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        parse_location(url, base_dir=tmp_path, data_dir=tmp_path, password_file="empty")
    with pytest.raises(ConfigError, match="for PostgreSQL only"):
        parse_location("sqlite:///x", base_dir=tmp_path, data_dir=tmp_path, password_file="e")
