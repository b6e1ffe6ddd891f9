"""The links file (launch/links.py) and the link proxy that watches it
(launch/linkproxy.py, in this process on loopback): units, defaults and per-link
overrides, atomic writes, every bad input named, and a running proxy applying a change
(and keeping its faults when the file turns bad)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.launch.faultproxy import LinkTable
from consortium.launch.linkproxy import SELF, apply, serve
from consortium.launch.links import (
    LinkFaults,
    LinksFile,
    describe,
    load_links,
    new_links,
    parse_duration_ms,
    parse_link,
    parse_rate_kbit,
    parse_share,
    set_faults,
)
from tests.cli.test_trust_cli import one_error_line

ROOT = Path(__file__).resolve().parents[2]
HOSTS = {"acme": "127.0.0.2", "globex": "127.0.0.1", "initech": "127.0.0.3"}


def test_units() -> None:
    assert parse_duration_ms("100ms", "k") == 100
    assert parse_duration_ms("1.5s", "k") == 1500
    assert parse_duration_ms("250us", "k") == 0.25
    assert parse_duration_ms("20", "k") == 20
    assert parse_share("5%", "k") == pytest.approx(0.05)
    assert parse_share("0.05", "k") == pytest.approx(0.05)
    assert parse_rate_kbit("1mbit", "k") == 1000
    assert parse_rate_kbit("500kbit", "k") == 500
    assert parse_rate_kbit("2mbps", "k") == 16000
    assert parse_rate_kbit("0", "k") == 0


@pytest.mark.parametrize(
    ("parse", "text", "key"),
    [
        (parse_duration_ms, "soon", "--delay"),
        (parse_duration_ms, "-5ms", "--delay"),
        (parse_duration_ms, "5m", "--delay"),
        (parse_share, "150%", "--loss"),
        (parse_share, "lots", "--loss"),
        (parse_rate_kbit, "fast", "--rate"),
        (parse_rate_kbit, "10", "--rate"),
    ],
)
def test_bad_units_name_the_option(parse: Callable[[str, str], float], text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse(text, key)


@pytest.mark.parametrize("text", ["acme", "acme:acme", "acme:Globex", "a:b:c", "acme:nobody"])
def test_bad_links_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--link"):
        parse_link(text, HOSTS)


def test_a_link_is_an_unordered_pair_over_the_default(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    set_faults(path, None, {"delay_ms": 20.0})
    links = set_faults(path, "globex:acme", {"loss": 0.05, "partition": True})
    assert links.version == 3
    assert set(links.links) == {"acme:globex"}
    ab = load_links(path).faults("acme", "globex")
    assert (ab.delay_ms, ab.loss, ab.partition) == (20.0, 0.05, True)
    assert load_links(path).faults("acme", "initech") == LinkFaults(delay_ms=20.0)
    # Only what was set is written for a link: the default shows through the rest.
    assert json.loads(path.read_text())["links"] == {
        "acme:globex": {"loss": 0.05, "partition": True}
    }
    healed = set_faults(path, "acme:globex", {}, heal=True)
    assert not healed.faults("acme", "globex").partition
    assert healed.faults("acme", "globex").loss == 0.05
    lines = describe(healed)
    assert "acme:globex: delay 20ms, loss 5% (rto 200ms)" in lines
    assert "acme:initech: delay 20ms" in lines
    assert "host acme 127.0.0.2" in lines


def test_heal_without_a_link_heals_every_link(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    set_faults(path, None, {"partition": True})
    set_faults(path, "acme:initech", {"stall": True})
    links = set_faults(path, None, {}, heal=True)
    assert not any(
        getattr(links.faults(a, b), flag)
        for a, b in (("acme", "globex"), ("acme", "initech"))
        for flag in ("stall", "partition", "refuse")
    )


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    inode = path.stat().st_ino
    set_faults(path, None, {"delay_ms": 1.0})
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["links.json"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"default": {"loss": 1.5}}, "default.loss"),
        ({"default": {"delay": 5}}, "default.delay"),
        ({"links": {"acme:globex": {"rate_kbit": -1}}}, "links.acme:globex.rate_kbit"),
        ({"hosts": {"Acme": "10.0.0.1"}}, "hosts.Acme"),
        ({"hosts": {"acme": "somewhere"}}, "hosts.acme"),
        ({"hosts": HOSTS, "links": {"acme:nobody": {}}}, "links.acme:nobody"),
    ],
)
def test_a_bad_file_names_the_key(tmp_path: Path, body: dict[str, object], key: str) -> None:
    path = tmp_path / "links.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as e:
        load_links(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_a_file_that_is_not_json_or_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_links(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a JSON links file"):
        load_links(tmp_path / "bad.json")


def test_the_table_of_a_proxy_follows_the_file() -> None:
    links = LinksFile(
        hosts=HOSTS,
        default=LinkFaults(delay_ms=5),
        links={"acme:globex": LinkFaults(loss=0.1)},
    )

    async def check() -> None:
        table = LinkTable()
        apply(table, links, "globex")
        assert table.resolve("127.0.0.2") == "acme:globex"
        assert table.resolve("127.0.0.3") == "globex:initech"
        assert table.resolve("127.0.0.1") == SELF
        assert table.resolve("10.9.9.9") is None  # not on the network: the default link
        assert table.link_for("127.0.0.2").faults == LinkFaults(delay_ms=5, loss=0.1)
        assert table.link_for("127.0.0.1").faults == LinkFaults()
        assert table.link_for("10.9.9.9").faults == LinkFaults(delay_ms=5)

    asyncio.run(check())


async def test_a_running_link_proxy_applies_changes_and_keeps_faults_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """globex's proxy on 127.0.0.1 in front of an echo server; acme connects from
    127.0.0.2. A partition set in the file holds acme's bytes; a broken file changes
    nothing; healing lets them through."""
    caplog.set_level(logging.INFO, logger="consortium.linkproxy")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.4", 0)
    port = upstream.sockets[0].getsockname()[1]
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    stop = asyncio.Event()
    proxy_task = asyncio.create_task(serve(path, "globex", "127.0.0.1", "127.0.0.4", [port], stop))

    async def until(condition: Callable[[], bool], what: str) -> None:
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise TimeoutError(what)

    def applied(version: int) -> bool:
        return f"links version {version} applied" in caplog.text

    try:
        await until(lambda: applied(1), "the proxy started")
        # The proxy listens on 127.0.0.1 with the upstream's port number.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        v = set_faults(path, "acme:globex", {"partition": True}).version
        await until(lambda: applied(v), "the partition is applied")
        writer.write(b"held")
        read = asyncio.create_task(reader.readexactly(4))
        good = path.read_text()
        path.write_text("{ broken")
        await until(lambda: "links file not applied" in caplog.text, "the bad file is seen")
        assert not read.done()  # still partitioned
        path.write_text(good)
        v = set_faults(path, "acme:globex", {}, heal=True).version
        await until(lambda: applied(v), "the heal is applied")
        assert await read == b"held"
        writer.close()
    finally:
        stop.set()
        await proxy_task
        upstream.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "net", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_net_set_and_show(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    r = cli(
        "set",
        str(path),
        "--link",
        "acme:globex",
        "--delay",
        "100ms",
        "--jitter",
        "10ms",
        "--loss",
        "5%",
        "--rate",
        "1mbit",
        "--partition",
    )
    assert r.returncode == 0, r.stderr
    assert "version 2" in r.stdout
    r = cli("show", str(path))
    assert r.returncode == 0, r.stderr
    assert (
        "acme:globex: delay 100ms, jitter 10ms, loss 5% (rto 200ms), rate 1000kbit, partition"
        in r.stdout
    )
    assert "acme:initech: clean" in r.stdout
    r = cli("set", str(path), "--link", "acme:globex", "--heal")
    assert r.returncode == 0, r.stderr
    assert "partition" not in cli("show", str(path)).stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--delay", "soon"], ["--delay"]),
        (["--loss", "200%"], ["--loss"]),
        (["--rate", "fast"], ["--rate"]),
        (["--link", "acme:nobody", "--delay", "1ms"], ["--link", "nobody"]),
        (["--partition", "--heal"], ["--heal"]),
        ([], ["nothing to change"]),
    ],
)
def test_net_set_bad_input_is_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    path = tmp_path / "links.json"
    new_links(path, HOSTS)
    one_error_line(cli("set", str(path), *args), 2, *words)
    assert load_links(path).version == 1  # nothing written


def test_net_show_of_a_missing_or_bad_file(tmp_path: Path) -> None:
    one_error_line(cli("show", str(tmp_path / "none.json")), 2, "not found")
    (tmp_path / "bad.json").write_text(json.dumps({"default": {"loss": 2}}))
    one_error_line(cli("show", str(tmp_path / "bad.json")), 2, "default.loss")
