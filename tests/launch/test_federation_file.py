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
