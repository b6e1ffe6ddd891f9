"""The federation file: a good one parses (the examples in deploy/examples among them);
every bad one is one ConfigError naming the file, the line and the key path; `key_line`
finds a key's line in the text."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.launch.federation_file import key_line, key_path, load_federation_file
from consortium.launch.launcher import organization

EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"

GOOD = """\
[federation]
name = "Test federation"
directory = "fed"

[telemetry]
endpoint = "http://127.0.0.1:4317"

[[org]]
id = "acme"
model = "smollm2-135m"
backend = "echo"
grpc_port = 0

[org.routing]
router = "cascade"
threshold = 0.5

[org.groups.panel]
protocol = "vote"
members = ["globex", "initech"]

[[org]]
id = "globex"
backend = "echo"
http_port = 18080

[org.redaction]
enabled = true

[org.trust]
cross_check_rate = 0.5

[[org]]
id = "initech"
backend = "openai"
model = "served"
base_url = "http://127.0.0.1:9000/v1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_federation_file(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message, "one line"
    return message


def test_a_good_file_parses(tmp_path: Path) -> None:
    file = load_federation_file(write(tmp_path, GOOD))
    assert file.org_ids() == ["acme", "globex", "initech"]
    assert file.directory == tmp_path / "fed"
    assert file.admin_key is None
    assert file.federation.isolate == "none"
    acme, globex, initech = (organization(o, file) for o in file.org)
    assert acme.backend == "echo" and acme.grpc_port == 0
    sections = tomllib.loads(acme.config_extra)
    assert sections["routing"] == {"router": "cascade", "threshold": 0.5}
    assert sections["groups"]["panel"]["members"] == ["globex", "initech"]
    assert sections["telemetry"] == {"exporter": "otlp-grpc", "endpoint": "http://127.0.0.1:4317"}
    assert tomllib.loads(globex.config_extra)["redaction"] == {"enabled": True}
    assert globex.http_port == 18080
    assert 'base_url = "http://127.0.0.1:9000/v1"' in initech.model_lines


@pytest.mark.parametrize("name", ["three-orgs.toml", "ten-orgs.toml"])
def test_the_examples_parse(name: str) -> None:
    file = load_federation_file(EXAMPLES / name)
    assert len(file.org) == (3 if name.startswith("three") else 10)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_federation_file(tmp_path / "nope.toml")


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('id = "globex"', 'id = "globex'))
    assert "federation.toml" in message and "invalid TOML" in message and "line 23" in message


def test_an_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("http_port = 18080", "http_port = 18080\nhttp_prot = 1")
    message = error_of(tmp_path, text)
    assert message.endswith("line 26: org[1].http_prot: unknown key"), message


def test_an_unknown_key_in_a_node_section(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("threshold = 0.5", "treshold = 0.5"))
    assert message.endswith("line 16: org[0].routing.treshold: unknown key"), message


def test_a_wrong_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("grpc_port = 0", 'grpc_port = "0"'))
    assert "line 12: org[0].grpc_port: " in message and "integer" in message, message


def test_a_missing_required_key_points_at_its_table(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('name = "Test federation"\n', ""))
    assert "line 1: federation.name: required" in message, message


def test_duplicate_organizations(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('id = "initech"', 'id = "acme"'))
    assert "line 34: org[2].id: 'acme' is declared twice (also org[0])" in message, message


def test_a_port_out_of_range(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("http_port = 18080", "http_port = 70000"))
    assert "line 25: org[1].http_port: " in message and "65535" in message, message


def test_a_port_taken_twice(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("grpc_port = 0", "grpc_port = 18080"))
    assert "line 25: org[1].http_port: port 18080 is taken by org[0].grpc_port" in message


def test_a_group_member_that_is_not_an_organization(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('["globex", "initech"]', '["globex", "hooli"]'))
    assert "line 20: org[0].groups.panel.members: 'hooli' is not an organization" in message


def test_isolate_is_validated(tmp_path: Path) -> None:
    text = GOOD.replace('directory = "fed"', 'directory = "fed"\nisolate = "vm"')
    assert "line 4: federation.isolate: " in error_of(tmp_path, text)
    text = GOOD.replace('directory = "fed"', 'directory = "fed"\nisolate = "netns"')
    assert load_federation_file(write(tmp_path, text)).federation.isolate == "netns"


def test_a_remote_backend_needs_its_url(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('base_url = "http://127.0.0.1:9000/v1"\n', ""))
    assert "line 33: org[2]: " in message and "base_url" in message, message
    message = error_of(tmp_path, GOOD + "threads = 2\n")
    assert "line 33: org[2]: threads do not apply" in message, message


def test_no_organizations(tmp_path: Path) -> None:
    assert "org: required" in error_of(tmp_path, '[federation]\nname = "x"\n')


def test_key_line_follows_tables_and_array_elements() -> None:
    text = '[a]\nx = 1\n[[b]]\ny = 2\n[b.c]\nz = 3\n[[b]]\n"y" = 4\nw.v = 5\n'
    assert key_line(text, ("a", "x")) == 2
    assert key_line(text, ("b", 0, "y")) == 4
    assert key_line(text, ("b", 0, "c", "z")) == 6
    assert key_line(text, ("b", 1, "y")) == 8
    assert key_line(text, ("b", 1, "w", "v")) == 9
    assert key_line(text, ("b", 1, "missing")) == 7
    assert key_line(text, ("nowhere",)) is None
    assert key_path(("b", 1, "c", "z")) == "b[1].c.z"


def test_provisioning_writes_node_tomls_that_load_and_changes_nothing_twice(
    tmp_path: Path,
) -> None:
    """What a first `up` creates before any node starts: every node.toml loads with the
    file's sections in it; a second provisioning changes no file."""
    import hashlib

    from consortium.launch.launcher import Launcher
    from consortium.node.config import load_config

    file = load_federation_file(write(tmp_path, GOOD))
    launcher = Launcher(file)
    launcher.provision()
    acme = load_config(tmp_path / "fed" / "acme" / "node.toml")
    assert acme.model.backend == "echo" and acme.routing.router == "cascade"
    assert acme.groups["panel"].members == ["globex", "initech"]
    assert acme.telemetry.exporter == "otlp-grpc"
    assert acme.federation is not None
    globex = load_config(tmp_path / "fed" / "globex" / "node.toml")
    assert globex.redaction.enabled and globex.trust.cross_check_rate == 0.5
    assert globex.server.http_port == 18080
    initech = load_config(tmp_path / "fed" / "initech" / "node.toml")
    assert initech.model.backend == "openai"
    assert initech.model.base_url == "http://127.0.0.1:9000/v1"

    def digests() -> dict[Path, str]:
        return {
            p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((tmp_path / "fed").rglob("*"))
            if p.is_file()
        }

    before = digests()
    Launcher(load_federation_file(write(tmp_path, GOOD))).provision()
    assert digests() == before


def test_the_admin_key_goes_where_the_file_places_it(tmp_path: Path) -> None:
    import stat

    from consortium.launch.launcher import Launcher, federation_paths

    text = GOOD.replace('directory = "fed"', 'directory = "fed"\nadmin_key = "secret/admin.jwk"')
    file = load_federation_file(write(tmp_path, text))
    Launcher(file).provision()
    placed = tmp_path / "secret" / "admin.jwk"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert not (tmp_path / "fed" / "federation" / "admin" / "private.jwk").exists()
    assert federation_paths(file).admin_private == placed  # found again
    placed.unlink()
    with pytest.raises(ConfigError, match=r"federation.admin_key: the admin key .* is missing"):
        federation_paths(file)
    other = load_federation_file(write(tmp_path, text.replace('"fed"', '"fed2"')))
    placed.write_text("{}")
    with pytest.raises(ConfigError, match="refusing to make a new admin key"):
        federation_paths(other)


def test_netns_placement_network_name_subnet_and_peer_settings(tmp_path: Path) -> None:
    """isolate = "netns" (no root needed to plan it): the network's name is short,
    stable and differs per federation directory; ports 0 become the fixed ports every
    namespace has to itself; [peers] lands in each node.toml's [federation]; a bad
    subnet or peer setting names its key and line."""
    from consortium.launch.launcher import Launcher, network_name

    netns = GOOD.replace('directory = "fed"', 'directory = "fed"\nisolate = "netns"')
    peers = netns + "\n[peers]\npeer_timeout_s = 5\nbreaker_open_s = 0.2\n"
    file = load_federation_file(write(tmp_path, peers))
    launcher = Launcher(file)
    assert launcher.network is not None
    name = launcher.network.name
    assert name == network_name(file) and name.startswith("test") and len(name) == 8
    assert launcher.network.subnet == "10.231.0.0/24"  # the default
    other = load_federation_file(write(tmp_path, peers.replace('"fed"', '"fed2"')))
    assert network_name(other) != name
    org = organization(file.org[0], file)
    assert (org.grpc_port, org.http_port) == (50051, 8080)
    assert org.federation_lines == "peer_timeout_s = 5.0\nbreaker_open_s = 0.2\n"

    subnet = netns.replace('isolate = "netns"', 'isolate = "netns"\nsubnet = "10.1.2.0/30"')
    network = Launcher(load_federation_file(write(tmp_path, subnet))).network
    assert network is not None and network.subnet == "10.1.2.0/30"
    for bad in ("10.1.2.0/31", "nonsense", "10.254.0.0/16"):
        text = netns.replace('isolate = "netns"', f'isolate = "netns"\nsubnet = "{bad}"')
        assert "line 5: federation.subnet: " in error_of(tmp_path, text)
    message = error_of(tmp_path, netns + "\n[peers]\npeer_timeout_s = -1\n")
    assert "peers.peer_timeout_s: " in message and "greater than 0" in message
    message = error_of(tmp_path, netns + '\n[peers]\nroster = "x.toml"\n')
    assert "peers.roster: " in message


def test_a_node_made_for_another_isolation_is_refused(tmp_path: Path) -> None:
    """A node.toml made on loopback (isolate = "none") is not silently reused in a
    namespace: the error names it and what to do."""
    from consortium.launch.launcher import Launcher, check_placement, placements

    path = write(tmp_path, GOOD)
    Launcher(load_federation_file(path)).provision()
    netns = load_federation_file(
        write(tmp_path, GOOD.replace('directory = "fed"', 'directory = "fed"\nisolate = "netns"'))
    )
    config = netns.directory / "acme" / "node.toml"
    loopback = placements(netns)["acme"]
    check_placement(config, loopback, netns)  # as made
    moved = type(loopback)(("ip",), "10.254.0.1", "10.231.0.2")
    with pytest.raises(ConfigError, match=r"federation\.isolate: .*acme/node.toml listens on"):
        check_placement(config, moved, netns)
    # On loopback, a node.toml made for a namespace is refused; one whose operator gave it
    # another address (0.0.0.0) is theirs.
    plain = load_federation_file(write(tmp_path, GOOD))
    text = config.read_text()
    config.write_text(text.replace('host = "127.0.0.1"', 'host = "0.0.0.0"', 1))
    check_placement(config, loopback, plain)
    config.write_text(text.replace('host = "127.0.0.1"', 'host = "10.254.0.1"', 1))
    with pytest.raises(ConfigError, match=r"listens on 10\.254\.0\.1"):
        check_placement(config, loopback, plain)


def test_restart_back_off_doubles_to_its_cap_and_resets_after_a_healthy_run(
    tmp_path: Path,
) -> None:
    from consortium.launch.launcher import Backoff, Launcher, NodeState, Placement
    from consortium.launch.local import Organization

    launcher = Launcher(load_federation_file(write(tmp_path, GOOD)), backoff=Backoff(1, 8, 60))
    state = NodeState(Organization("acme", "Acme", "smollm2-135m"), Placement())
    assert launcher.next_delay(state, 0.0) == 1  # the first restart
    delays = []
    for _ in range(6):
        state.delay_s = launcher.backoff.next(launcher.next_delay(state, 10.0))
        delays.append(state.delay_s)
    assert delays == [2, 4, 8, 8, 8, 8]
    state.started_at = 100.0
    assert launcher.next_delay(state, 150.0) == 8  # died again within a minute
    assert launcher.next_delay(state, 160.0) == 1  # ran a minute: back to the start


def test_consortium_net_takes_a_federation_file_once_it_ran_in_namespaces(
    tmp_path: Path,
) -> None:
    """`consortium net set|show FILE.toml`: the federation's DIRECTORY/links.json; before
    any `up --isolate netns` made it, one line says so. A links file is itself."""
    from consortium.launch.launcher import links_file, load

    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="has not run in namespaces"):
        links_file(path)
    links = tmp_path / "fed" / "links.json"
    links.parent.mkdir()
    links.write_text("{}")
    assert links_file(path) == links
    assert links_file(links) == links
    assert load(path, "netns").federation.isolate == "netns"
    assert load(path).federation.isolate == "none"
    with pytest.raises(ConfigError, match="--isolate"):
        load(path, "vm")
