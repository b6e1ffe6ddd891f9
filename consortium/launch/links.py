"""The links file: what the network between organizations does, per link or for all of
them, read by every link proxy (launch/linkproxy.py) each time it changes and written by
`consortium net set` (or a launcher) atomically.

    {
      "version": 3,                          # bumped by every write; proxies log it
      "seed": 0,                             # the proxies' random draws (loss, jitter, resets)
      "hosts": {"acme": "10.231.0.2", ...},  # bridge address of each organization
      "default": {"delay_ms": 20},           # every link not listed below
      "links": {"acme:globex": {"delay_ms": 100, "loss": 0.05, "partition": true}}
    }

A link is an unordered pair of organizations ("acme:globex" = "globex:acme") and its
faults apply both ways. A link entry holds only what was set for it; every other field
comes from `default`. The fields (`LinkFaults`):

- `delay_ms`, `jitter_ms`: one way, each direction (a round trip is twice the delay); the
  jitter is uniform within ±jitter and never reorders (TCP delivers in order);
- `loss`: the share of chunks lost. TCP never loses data for the application: a lost
  segment costs its sender a retransmission timeout and stalls what follows it (head of
  line). So each chunk is, with this probability, delayed by an RTO of max(`rto_ms`,
  2 x RTT), doubled each time the retransmission is lost too (seeded draws);
- `rate_kbit`: bandwidth per direction (token bucket), 0 for none;
- `reset`: the share of chunks that reset their connection (RST both ways);
- `stall`: connections open when it is set freeze (nothing passes either way, silently);
  new connections pass;
- `partition`: nothing passes either way, on open or new connections, silently (no ICMP
  comes back: a connection is accepted and then never answered); what was held flows
  on when the link heals, as TCP's retransmissions would deliver it;
- `refuse`: new connections are reset at once and open ones reset (a host that is down,
  or a partition whose routers answer "unreachable").

The file holds addresses and numbers only, no secret. A file that does not parse or
validate raises ConfigError naming the file and the key; a proxy keeps the faults it has.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from consortium.errors import ConfigError
from consortium.node.config import ORG_ID_PATTERN

DEFAULT_RTO_MS = 200.0


class LinkFaults(BaseModel):
    """What one link does (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    jitter_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    loss: Annotated[float, Field(ge=0, lt=1)] = 0.0
    rto_ms: Annotated[float, Field(gt=0, le=600_000)] = DEFAULT_RTO_MS
    rate_kbit: Annotated[float, Field(ge=0, le=100_000_000)] = 0.0
    reset: Annotated[float, Field(ge=0, le=1)] = 0.0
    stall: bool = False
    partition: bool = False
    refuse: bool = False

    def over(self, base: LinkFaults) -> LinkFaults:
        """These faults where set, `base`'s elsewhere."""
        return base.model_copy(update={k: getattr(self, k) for k in self.model_fields_set})

    @property
    def healthy(self) -> bool:
        return self == LinkFaults()


def _address(text: str) -> str:
    return str(ipaddress.ip_address(text))  # ValueError: "does not appear to be an IP..."


class LinksFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=0)] = 0
    seed: int = 0
    hosts: dict[
        Annotated[str, Field(pattern=ORG_ID_PATTERN)], Annotated[str, AfterValidator(_address)]
    ] = Field(default_factory=dict)
    default: LinkFaults = LinkFaults()
    links: dict[str, LinkFaults] = Field(default_factory=dict)

    def faults(self, a: str, b: str) -> LinkFaults:
        """The faults of the link between organizations a and b."""
        own = self.links.get(link_name(a, b))
        return own.over(self.default) if own is not None else self.default

    def org_at(self, address: str) -> str | None:
        """The organization whose bridge address this is."""
        for org, host in self.hosts.items():
            if host == address:
                return org
        return None


def link_name(a: str, b: str) -> str:
    """The key of the link between two organizations: the pair, sorted."""
    return ":".join(sorted((a, b)))


def parse_link(text: str, hosts: dict[str, str] | None = None, key: str = "--link") -> str:
    """The link key of "A:B"; with `hosts`, both must be organizations it lists. `key`:
    what a ConfigError names."""
    parts = text.split(":")
    if len(parts) != 2 or not all(re.match(ORG_ID_PATTERN, p) for p in parts):
        raise ConfigError(f"{text!r} is not a link: ORG:ORG", key=key)
    if parts[0] == parts[1]:
        raise ConfigError(f"{text!r}: a link joins two organizations", key=key)
    for org in parts:
        if hosts and org not in hosts:
            raise ConfigError(
                f"no organization {org!r} on this network ({', '.join(sorted(hosts))})",
                key=key,
            )
    return link_name(*parts)


def parse_duration_ms(text: str, key: str) -> float:
    """'100ms', '1.5s', '250us' or a bare number of milliseconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(us|ms|s)?\s*", text)
    if m is None:
        raise ConfigError(f"{text!r} is not a duration (100ms, 1.5s)", key=key)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_share(text: str, key: str) -> float:
    """'5%' or '0.05', within [0, 1]."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(%)?\s*", text)
    if m is None:
        raise ConfigError(f"{text!r} is not a share (5%, 0.05)", key=key)
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if value > 1:
        raise ConfigError(f"{text!r} is more than 100%", key=key)
    return value


# tc's units: bit rates, and bytes per second as "bps".
_RATES = {"bit": 1e-3, "kbit": 1.0, "mbit": 1e3, "gbit": 1e6, "bps": 8e-3, "kbps": 8.0, "mbps": 8e3}


def parse_rate_kbit(text: str, key: str) -> float:
    """'1mbit', '500kbit', '2mbps' (bytes, as tc reads it) in kbit/s; '0' for none."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)\s*", text.lower())
    if m is None or (
        m.group(2) not in _RATES and not (m.group(2) == "" and float(m.group(1)) == 0)
    ):
        raise ConfigError(f"{text!r} is not a rate (1mbit, 500kbit, 2mbps)", key=key)
    return float(m.group(1)) * _RATES.get(m.group(2), 0.0)


def load_links(path: Path) -> LinksFile:
    """The links file; ConfigError naming the file and key when it is not valid."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("links file not found", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"not a JSON links file: {e}", path=str(path)) from None
    try:
        links = LinksFile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], path=str(path), key=key) from None
    for name in links.links:
        try:
            parse_link(name, links.hosts, key=f"links.{name}")
        except ConfigError as e:
            raise ConfigError(str(e), path=str(path)) from None
    return links


def save_links(path: Path, links: LinksFile) -> LinksFile:
    """Writes the file atomically (a temporary file renamed over it), its version
    bumped; returns what was written."""
    links = links.model_copy(update={"version": links.version + 1})
    body: dict[str, Any] = links.model_dump(exclude_unset=False)
    body["default"] = links.default.model_dump(exclude_unset=True)
    body["links"] = {k: v.model_dump(exclude_unset=True) for k, v in sorted(links.links.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return links


def new_links(path: Path, hosts: dict[str, str], seed: int = 0) -> LinksFile:
    """A links file for these hosts, every link clean (what a launcher writes)."""
    return save_links(path, LinksFile(hosts=dict(hosts), seed=seed))


def set_faults(
    path: Path, link: str | None, changes: dict[str, Any], *, heal: bool = False
) -> LinksFile:
    """Changes one link's faults (`link` "A:B"), or the default's (None), and writes the
    file. `heal` clears stall, partition and refuse — on every link when `link` is None."""
    links = load_links(path) if path.exists() else LinksFile()
    cleared = {"stall": False, "partition": False, "refuse": False} if heal else {}
    if link is None:
        default = _with(links.default, {**cleared, **changes})
        entries = links.links
        if heal:
            entries = {k: _with(v, cleared) for k, v in entries.items()}
        links = links.model_copy(update={"default": default, "links": entries})
    else:
        name = parse_link(link, links.hosts)
        entry = _with(links.links.get(name, LinkFaults()), {**cleared, **changes})
        links = links.model_copy(update={"links": {**links.links, name: entry}})
    return save_links(path, links)


def _with(faults: LinkFaults, changes: dict[str, Any]) -> LinkFaults:
    """`faults` with `changes`, validated, the changed fields counted as set."""
    data = {k: getattr(faults, k) for k in faults.model_fields_set}
    data.update(changes)
    try:
        return LinkFaults.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(first["msg"], key=".".join(str(p) for p in first["loc"])) from None


def describe(links: LinksFile) -> list[str]:
    """What `consortium net show` prints: the version, each host, the default and every
    link between two hosts (or listed) with its faults."""
    lines = [f"version {links.version}, seed {links.seed}"]
    lines += [f"host {org} {address}" for org, address in sorted(links.hosts.items())]
    lines.append(f"default: {summary(links.default)}")
    names = set(links.links)
    orgs = sorted(links.hosts)
    names |= {link_name(a, b) for i, a in enumerate(orgs) for b in orgs[i + 1 :]}
    for name in sorted(names):
        a, _, b = name.partition(":")
        lines.append(f"{name}: {summary(links.faults(a, b))}")
    return lines


def summary(f: LinkFaults) -> str:
    """One link's faults in the units `consortium net set` takes."""
    parts = []
    if f.delay_ms:
        parts.append(f"delay {f.delay_ms:g}ms")
    if f.jitter_ms:
        parts.append(f"jitter {f.jitter_ms:g}ms")
    if f.loss:
        parts.append(f"loss {f.loss * 100:g}% (rto {f.rto_ms:g}ms)")
    if f.rate_kbit:
        parts.append(f"rate {f.rate_kbit:g}kbit")
    if f.reset:
        parts.append(f"reset {f.reset * 100:g}%")
    parts += [flag for flag in ("stall", "partition", "refuse") if getattr(f, flag)]
    return ", ".join(parts) or "clean"
