"""Federation administration: create a federation, admit members from their agent cards,
suspend or revoke them, rotate their keys. Every change writes a new, re-signed roster
version."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
from jwcrypto import jwk

from consortium.errors import ConfigError
from consortium.federation.roster import (
    Capabilities,
    Endpoints,
    Member,
    MemberKey,
    Roster,
    RosterError,
    Status,
    load_verified_roster,
    parse_time,
    sign_roster,
    write_roster,
)
from consortium.protocols.extensions import IDENTITY_EXTENSION_URI, MODEL_EXTENSION_URI
from consortium.trust.keys import (
    generate_key,
    key_id,
    load_private_key,
    public_jwk,
    write_private_key,
    write_public_key,
)


@dataclass(frozen=True)
class FederationPaths:
    roster: Path
    admin_private: Path
    admin_public: Path


def default_paths(roster: Path) -> FederationPaths:
    admin = roster.parent / "admin"
    return FederationPaths(roster, admin / "private.jwk", admin / "public.jwk")


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]
    if not s:
        raise ConfigError(f"federation name {name!r} has no letters or digits", key="NAME")
    return s


def create_federation(name: str, directory: Path) -> FederationPaths:
    paths = default_paths(directory / "federation.toml")
    if paths.roster.exists():
        raise ConfigError(
            "federation.toml already exists; refusing to overwrite it", path=str(paths.roster)
        )
    key = generate_key()
    write_private_key(paths.admin_private, key)
    write_public_key(paths.admin_public, key)
    roster = Roster(federation_id=slug(name), name=name)
    write_roster(paths.roster, sign_roster(roster, [key]))
    return paths


def load_admin_key(path: Path) -> jwk.JWK:
    return load_private_key(path)


def _trusted(admin_key: jwk.JWK) -> list[jwk.JWK]:
    return [jwk.JWK(**public_jwk(admin_key))]


def update_roster(roster_path: Path, admin_key_path: Path, change: Any) -> Roster:
    """Loads and verifies the roster, applies change(roster) -> Roster, bumps the version,
    re-signs and writes it atomically."""
    key = load_admin_key(admin_key_path)
    current = load_verified_roster(roster_path, _trusted(key))
    updated: Roster = change(current)
    updated = updated.model_copy(update={"version": current.version + 1})
    signed = sign_roster(Roster.model_validate(updated.model_dump()), [key])
    write_roster(roster_path, signed)
    return signed


def read_card(source: str) -> tuple[dict[str, Any], str]:
    """An agent card from a file path or an http(s) URL; returns (card, its URL or '')."""
    if source.startswith(("http://", "https://")):
        url = (
            source
            if source.endswith(".json")
            else source.rstrip("/") + "/.well-known/agent-card.json"
        )
        try:
            resp = httpx.get(url, timeout=10.0)
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ConfigError(f"cannot fetch agent card from {url}: {e}", key="--card") from None
        return data, url
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("agent card file not found", path=str(path)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"not a JSON agent card: {e}", path=str(path)) from None
    return data, ""


def member_from_card(card: dict[str, Any], card_url: str = "") -> Member:
    if not isinstance(card, dict):
        raise ConfigError("the agent card is not a JSON object", key="--card")
    extensions = {
        e.get("uri"): e.get("params", {})
        for e in card.get("capabilities", {}).get("extensions", [])
        if isinstance(e, dict)
    }
    identity = extensions.get(IDENTITY_EXTENSION_URI)
    if not identity or not identity.get("keys"):
        raise ConfigError(
            f"the agent card declares no signing key (extension {IDENTITY_EXTENSION_URI})",
            key="--card",
        )
    model = extensions.get(MODEL_EXTENSION_URI, {})
    interfaces = {
        i.get("protocolBinding"): i.get("url", "") for i in card.get("supportedInterfaces", [])
    }
    keys = [member_key(k, "--card") for k in identity["keys"]]
    try:
        return Member(
            org_id=str(identity.get("org_id", "")),
            display_name=str(card.get("provider", {}).get("organization") or card.get("name", "")),
            endpoints=Endpoints(
                grpc=interfaces.get("GRPC", ""),
                jsonrpc=interfaces.get("JSONRPC", ""),
                agent_card=card_url,
            ),
            capabilities=Capabilities(
                models=[str(model["model"])] if model.get("model") else [],
                context_size=int(model.get("context_size", 0) or 0),
            ),
            keys=keys,
        )
    except ValueError as e:
        raise ConfigError(
            f"the agent card does not describe a valid member: {e}", key="--card"
        ) from None


def member_key(k: Any, option: str) -> MemberKey:
    """A roster key entry from a public JWK (its key id is recomputed, never trusted)."""
    try:
        key = jwk.JWK(**{f: k[f] for f in ("kty", "crv", "x")})
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a valid public key: {e}", key=option) from None
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise ConfigError("the key is not Ed25519 (kty OKP, crv Ed25519)", key=option)
    return MemberKey(kid=key_id(key), x=str(k["x"]))


def read_public_key(path: Path) -> MemberKey:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("public key file not found", path=str(path)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"not a JSON Web Key: {e}", path=str(path)) from None
    if isinstance(data, dict) and "d" in data:
        raise ConfigError(
            "this is a private key; give the member's public key (next-public.jwk)",
            path=str(path),
        )
    return member_key(data, "--key")


def rotate_key(
    roster_path: Path, admin_key_path: Path, org_id: str, new_key: MemberKey, old_expires: str
) -> Roster:
    """Lists `new_key` for the member; its current keys stay valid until `old_expires`
    (ISO 8601), so messages signed before the member switches keep verifying."""
    try:
        expiry = parse_time(old_expires)
    except ValueError as e:
        raise ConfigError(str(e), key="--old-key-expires") from None
    stamp = expiry.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def change(r: Roster) -> Roster:
        m = r.member(org_id)
        if m is None:
            raise RosterError(f"{org_id} is not a member", path=str(roster_path))
        if m.status == "revoked":
            raise RosterError(f"{org_id} is revoked; revocation is final", path=str(roster_path))
        if any(k.kid == new_key.kid for k in m.keys):
            raise RosterError(f"{org_id} already has key {new_key.kid}", path=str(roster_path))
        old = [
            k
            if k.not_after and parse_time(k.not_after) <= expiry
            else k.model_copy(update={"not_after": stamp})
            for k in m.keys
        ]
        updated = m.model_copy(update={"keys": [*old, new_key]})
        return r.model_copy(
            update={"members": [updated if x.org_id == org_id else x for x in r.members]}
        )

    return update_roster(roster_path, admin_key_path, change)


def add_member(roster_path: Path, admin_key_path: Path, member: Member) -> Roster:
    def change(r: Roster) -> Roster:
        if r.member(member.org_id) is not None:
            raise RosterError(f"{member.org_id} is already a member", path=str(roster_path))
        return r.model_copy(update={"members": [*r.members, member]})

    return update_roster(roster_path, admin_key_path, change)


def set_endpoints(
    roster_path: Path, admin_key_path: Path, org_id: str, endpoints: Endpoints
) -> Roster:
    """A member's endpoints replaced (its node moved, e.g. restarted on other ports)."""

    def change(r: Roster) -> Roster:
        if r.member(org_id) is None:
            raise RosterError(f"{org_id} is not a member", path=str(roster_path))
        members = [
            x.model_copy(update={"endpoints": endpoints}) if x.org_id == org_id else x
            for x in r.members
        ]
        return r.model_copy(update={"members": members})

    return update_roster(roster_path, admin_key_path, change)


def set_status(roster_path: Path, admin_key_path: Path, org_id: str, status: Status) -> Roster:
    def change(r: Roster) -> Roster:
        m = r.member(org_id)
        if m is None:
            raise RosterError(f"{org_id} is not a member", path=str(roster_path))
        if m.status == "revoked":
            raise RosterError(f"{org_id} is revoked; revocation is final", path=str(roster_path))
        members = [
            x.model_copy(update={"status": status}) if x.org_id == org_id else x for x in r.members
        ]
        return r.model_copy(update={"members": members})

    return update_roster(roster_path, admin_key_path, change)
