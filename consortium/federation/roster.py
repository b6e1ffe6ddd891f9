"""The federation roster (`federation.toml`): who belongs, how to reach them, which keys
speak for them, and whether they are active; signed by the federation's admin key(s).

The signature is a detached JWS (EdDSA) over the RFC 8785 canonical JSON of the roster
without its `signatures` field, so it does not depend on TOML formatting. A roster is
accepted only when at least one signature verifies under a trusted admin key
(trust.documents, as for the routing policy).
"""

from __future__ import annotations

import functools
import os
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from jwcrypto import jwk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consortium.errors import ConfigError
from consortium.trust.documents import DocumentError, sign_document, verify_document
from consortium.trust.keys import key_id

ORG_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"
Status = Literal["active", "suspended", "revoked"]


class RosterError(ConfigError):
    """A roster file is missing, malformed, or not validly signed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberKey(_Model):
    """A member's Ed25519 public key as a JWK; `not_after` ends its validity (rotation)."""

    kid: str
    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: str
    not_after: str = ""

    @field_validator("not_after")
    @classmethod
    def _iso(cls, v: str) -> str:
        if v:
            parse_time(v)
        return v

    def jwk(self) -> jwk.JWK:
        return _checked_jwk(self.kid, self.x)

    def valid_at(self, when: datetime) -> bool:
        return not self.not_after or when <= parse_time(self.not_after)


class Endpoints(_Model):
    grpc: str = ""
    jsonrpc: str = ""
    agent_card: str = ""


class Capabilities(_Model):
    models: list[str] = Field(default_factory=list)
    context_size: Annotated[int, Field(ge=0)] = 0
    price_per_1k_tokens: Annotated[float, Field(ge=0)] = 0.0
    typical_latency_ms: Annotated[float, Field(ge=0)] = 0.0
    region: str = ""
    jurisdiction: str = ""


class Member(_Model):
    org_id: Annotated[str, Field(pattern=ORG_ID)]
    display_name: str = ""
    status: Status = "active"
    endpoints: Endpoints = Endpoints()
    capabilities: Capabilities = Capabilities()
    keys: list[MemberKey] = Field(min_length=1)
    # A founder is pre-trusted: members fold each other's trust reports EigenTrust-style
    # (trust/reports.py), and the founders get a fixed share of the reporters' weight.
    founder: bool = False

    def key(self, kid: str, when: datetime | None = None) -> jwk.JWK | None:
        at = when or datetime.now(UTC)
        for k in self.keys:
            if k.kid == kid and k.valid_at(at):
                return k.jwk()
        return None


class Roster(_Model):
    federation_id: Annotated[str, Field(pattern=ORG_ID)]
    name: str
    version: Annotated[int, Field(ge=1)] = 1
    issued_at: str = ""
    members: list[Member] = Field(default_factory=list)
    signatures: list[str] = Field(default_factory=list)

    @field_validator("members")
    @classmethod
    def _unique(cls, members: list[Member]) -> list[Member]:
        seen: set[str] = set()
        for m in members:
            if m.org_id in seen:
                raise ValueError(f"member {m.org_id} is listed twice")
            seen.add(m.org_id)
        return members

    def member(self, org_id: str) -> Member | None:
        return next((m for m in self.members if m.org_id == org_id), None)

    def founders(self) -> frozenset[str]:
        """The members the roster marks as founders (active or not)."""
        return frozenset(m.org_id for m in self.members if m.founder)

    def signed_content(self) -> dict[str, Any]:
        """What the admin signature covers: everything but the signatures. A member's
        `founder` flag is left out when false, so a roster signed before the flag existed
        still verifies, and one without founders signs to the same bytes as before."""
        content = self.model_dump(mode="json", exclude={"signatures"})
        for member in content["members"]:
            if not member.get("founder"):
                member.pop("founder", None)
        return content


@functools.lru_cache(maxsize=1024)
def _checked_jwk(kid: str, x: str) -> jwk.JWK:
    """The JWK of a roster key, once its key id is checked to be its RFC 7638 thumbprint."""
    key = jwk.JWK(kty="OKP", crv="Ed25519", x=x)
    if key_id(key) != kid:
        raise RosterError(f"key id {kid} is not the RFC 7638 thumbprint of its key")
    return key


def parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sign_roster(roster: Roster, admin_keys: list[jwk.JWK]) -> Roster:
    """A new version of the roster, stamped and signed by every given admin key."""
    return sign_document(roster.model_copy(update={"issued_at": now_iso()}), admin_keys)


def verify_roster(roster: Roster, trusted_admin_keys: list[jwk.JWK]) -> str:
    """Returns the key id of an admin key whose signature verifies; raises RosterError."""
    try:
        kid = verify_document(roster, trusted_admin_keys, what="roster")
    except DocumentError as e:
        raise RosterError(str(e)) from None
    for m in roster.members:
        for k in m.keys:
            k.jwk()  # every listed key must match its key id
    return kid


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = (
        "required"
        if err["type"] == "missing"
        else "unknown key"
        if err["type"] == "extra_forbidden"
        else err["msg"]
    )
    return f"{loc}: {msg}" if loc else msg


def load_roster(path: Path) -> Roster:
    """Parses a roster file (signature not checked: see verify_roster)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RosterError("file not found", path=str(path)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RosterError(f"invalid TOML: {e}", path=str(path)) from None
    try:
        return Roster.model_validate(data)
    except ValidationError as e:
        raise RosterError(_describe(e), path=str(path)) from None


def load_verified_roster(path: Path, trusted_admin_keys: list[jwk.JWK]) -> Roster:
    roster = load_roster(path)
    try:
        verify_roster(roster, trusted_admin_keys)
    except RosterError as e:
        raise RosterError(str(e), path=str(path)) from None
    return roster


def write_roster(path: Path, roster: Roster) -> None:
    """Writes atomically (temp file + rename): a reader never sees half a roster."""
    data = roster.model_dump(mode="json", exclude_defaults=False)
    for member in data["members"]:  # written only for founders, as it is signed
        if not member.get("founder"):
            member.pop("founder", None)
    text = tomli_w.dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
