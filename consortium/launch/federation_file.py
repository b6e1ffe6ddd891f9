"""The federation file `consortium up` reads: one TOML file declaring a federation and its
organizations, validated with pydantic. A bad file raises one ConfigError naming the file,
the key path and its line (`file.toml: line 12: org[1].http_port: ...`); tomllib gives no
positions, so `key_line` finds a key's line in the text.

    [federation]
    name = "Demo"
    directory = "demo-federation"    # relative to this file: federation/, one dir per org
    admin_key = ""                   # the admin's private key; "": DIRECTORY/federation/admin/
    isolate = "none"                 # none | netns (each organization in its own namespace)
    subnet = "10.231.0.0/24"         # netns: the bridge's subnet (.1 this machine, .2... orgs)

    [peers]                          # optional: node.toml's [federation] settings for
    peer_timeout_s = 120.0           # every node (peer_timeout_s, failover_peers,
                                     # breaker_*, max_clock_skew_s)

    [telemetry]                      # optional: every node exports its spans here
    endpoint = "http://127.0.0.1:4317"
    protocol = "grpc"                # grpc | http

    [[org]]
    id = "acme"
    model = "smollm2-135m"           # a bundled model, a GGUF path, or the remote's model
    backend = "llama_cpp"            # llama_cpp | transformers | echo | openai
    base_url = ""                    # openai: the server's API root
    grpc_port = 0                    # 0: a free port at each start
    http_port = 0
    threads = 0                      # 0: a share of this machine's cores
    [org.routing]                    # node.toml's [routing], [groups.NAME], [redaction],
    router = "cascade"             # [trust] and [audit], as node.toml takes them
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from consortium.errors import ConfigError
from consortium.launch.netns import Network, NetworkError
from consortium.node.config import (
    ORG_ID_PATTERN,
    AuditSection,
    GroupSection,
    RoutingSection,
    TrustSection,
    validation_message,
)
from consortium.node.config import FederationSection as NodeFederationSection
from consortium.redaction.policy import RedactionPolicy

Port = Annotated[int, Field(ge=0, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FederationSection(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    directory: str = ""
    admin_key: str = ""
    isolate: Literal["none", "netns"] = "none"
    # netns: the bridge's IPv4 subnet (launch/netns.py; "" its default).
    subnet: str = ""

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        if value:
            try:
                Network("check", subnet=value)
            except NetworkError as e:
                raise ValueError(str(e)) from None
        return value


class PeersSection(NodeFederationSection):
    """node.toml's [federation] settings every organization's node gets: how it treats
    its peers (peer_timeout_s, failover_peers, breaker_*, max_clock_skew_s). The roster
    and admin key are the launcher's to write."""

    roster: Literal[""] = ""
    admin_key: Literal[""] = ""

    def lines(self) -> str:
        """The settings the file sets, as TOML lines of node.toml's [federation]."""
        return "".join(f"{k} = {v!r}\n" for k, v in self.model_dump(exclude_unset=True).items())


class TelemetrySection(_Strict):
    endpoint: Annotated[str, Field(pattern=r"^https?://\S+$")]
    protocol: Literal["grpc", "http"] = "grpc"


class OrgSection(_Strict):
    id: Annotated[str, Field(pattern=ORG_ID_PATTERN)]
    display_name: str = ""
    model: str = "smollm2-135m"
    backend: Literal["llama_cpp", "transformers", "echo", "openai"] = "llama_cpp"
    base_url: str = ""
    api_key_file: str = ""
    grpc_port: Port = 0
    http_port: Port = 0
    threads: Annotated[int, Field(ge=0, le=256)] = 0
    # node.toml's own sections, validated by node.toml's models (not strict: they are
    # node.toml's rules, e.g. an integer where a float is expected).
    routing: RoutingSection | None = None
    groups: dict[Annotated[str, Field(pattern=ORG_ID_PATTERN)], GroupSection] = Field(
        default_factory=dict
    )
    redaction: RedactionPolicy | None = None
    trust: TrustSection | None = None
    audit: AuditSection | None = None

    @model_validator(mode="after")
    def _remote(self) -> OrgSection:
        if self.backend == "openai" and not self.base_url:
            raise ValueError('backend = "openai" needs base_url (the server\'s API root)')
        if self.backend == "openai" and self.threads:
            raise ValueError('threads do not apply to backend = "openai" (the server runs it)')
        return self

    def node_sections(self) -> dict[str, Any]:
        """The node.toml sections the file sets for this organization, as written there."""
        sections: dict[str, Any] = {}
        for name in ("routing", "redaction", "trust", "audit"):
            section = getattr(self, name)
            if section is not None:
                sections[name] = section.model_dump(mode="json", exclude_unset=True)
        if self.groups:
            sections["groups"] = {
                k: g.model_dump(mode="json", exclude_unset=True) for k, g in self.groups.items()
            }
        return sections


class FederationFile(_Strict):
    federation: FederationSection
    telemetry: TelemetrySection | None = None
    peers: PeersSection | None = None
    org: Annotated[list[OrgSection], Field(min_length=1, max_length=256)]
    # Set by load_federation_file: the file, which relative paths are resolved against.
    path: Path = Path("federation.toml")

    @property
    def directory(self) -> Path:
        """Where the federation lives: federation/ and one directory per organization."""
        d = self.federation.directory or self.path.stem
        return _resolve(self.path, d)

    @property
    def admin_key(self) -> Path | None:
        """The admin's private key, when the file places it (else beside the roster)."""
        return _resolve(self.path, self.federation.admin_key) if self.federation.admin_key else None

    def org_ids(self) -> list[str]:
        return [o.id for o in self.org]


def _resolve(base_file: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_file.parent / p


def _check(file: FederationFile) -> tuple[tuple[str | int, ...], str] | None:
    """Rules across organizations: the key path of the first broken one and what is
    wrong, or None."""
    seen: dict[str, int] = {}
    for i, org in enumerate(file.org):
        if org.id in seen:
            return ("org", i, "id"), f"{org.id!r} is declared twice (also org[{seen[org.id]}])"
        seen[org.id] = i
    ports: dict[int, str] = {}
    for i, org in enumerate(file.org):
        for key in ("grpc_port", "http_port"):
            port = getattr(org, key)
            if port == 0:
                continue
            if port in ports:
                return ("org", i, key), f"port {port} is taken by {ports[port]}"
            ports[port] = f"org[{i}].{key}"
    for i, org in enumerate(file.org):
        for name, group in org.groups.items():
            for member in group.members:
                if member not in seen and member != "self":
                    return (
                        ("org", i, "groups", name, "members"),
                        f"{member!r} is not an organization of this file",
                    )
    return None


def load_federation_file(path: Path) -> FederationFile:
    """The file, validated; ConfigError (one line: file, line, key path, what) if not."""
    if not path.is_file():
        raise ConfigError("file not found" if not path.exists() else "not a file", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line N, column M)".
        raise ConfigError(f"invalid TOML: {e}", path=str(path)) from None
    if "path" in data:
        raise ConfigError("unknown key", path=_where(path, text, ("path",)), key="path")
    try:
        file = FederationFile.model_validate({**data, "path": path.resolve()})
    except ValidationError as e:
        error = e.errors()[0]
        loc = tuple(p for p in error.get("loc", ()) if p != "__root__")
        extra = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(
            validation_message(error) + extra,
            path=_where(path, text, loc),
            key=key_path(loc) or None,
        ) from None
    broken = _check(file)
    if broken is not None:
        loc, msg = broken
        raise ConfigError(msg, path=_where(path, text, loc), key=key_path(loc))
    return file


def key_path(loc: tuple[str | int, ...]) -> str:
    """('org', 1, 'http_port') -> 'org[1].http_port'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _where(path: Path, text: str, loc: tuple[str | int, ...]) -> str:
    line = key_line(text, loc)
    return f"{path}: line {line}" if line else str(path)


# -- where a key is in the text --------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def _keys(text: str) -> Iterator[tuple[tuple[str | int, ...], int]]:
    """Every table header and key of the text with its line (1-based), as full key paths
    with the index of each array-of-tables element: `[[org]]` twice gives ('org', 1)."""
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = False
            continue
        header = _HEADER.match(line)
        if header is not None:
            parts = _parts(header.group(2))
            resolved: tuple[str | int, ...] = ()
            for i, part in enumerate(parts):
                resolved += (part,)
                last = i == len(parts) - 1
                if last and header.group(1) == "[[":
                    counts[resolved] = counts.get(resolved, -1) + 1
                    resolved += (counts[resolved],)
                elif resolved in counts:  # a table inside the latest array element
                    resolved += (counts[resolved],)
            table = resolved
            yield table, number
            continue
        key = _KEY.match(line)
        if key is not None:
            yield table + tuple(_parts(key.group(1))), number
            rest = line[key.end() :]
            if rest.count('"""') == 1 or rest.count("'''") == 1:
                in_multiline = True


def key_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line of the key at `loc` (a pydantic error location); for a key that is not
    there (a required one), the line of the longest prefix of it that is: its table."""
    lines: dict[tuple[str | int, ...], int] = {}
    for key, number in _keys(text):
        lines.setdefault(key, number)
    for end in range(len(loc), 0, -1):
        if (found := lines.get(tuple(loc[:end]))) is not None:
            return found
    return None
