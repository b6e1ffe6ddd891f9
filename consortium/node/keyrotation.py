"""Rotating an organization's signing key without a gap in service.

1. `consortium key rotate` stages a new key pair next to the current one (the node keeps
   signing with the current key).
2. The federation admin lists the new key in the roster, with an expiry on the old one
   (`consortium federation rotate-key`); peers then accept both.
3. `consortium key activate` makes the staged key current (the old private key is kept,
   mode 0600, under keys/retired/) and rewrites the agent card; a restarted node signs
   with the new key. If the node belongs to a federation, activation is refused until
   the roster lists the new key, since peers would refuse everything signed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consortium.errors import ConfigError
from consortium.node.config import NodeConfig, load_config
from consortium.trust.keys import (
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    write_private_key,
    write_public_key,
)


@dataclass(frozen=True)
class KeyPaths:
    private: Path
    public: Path
    staged_private: Path
    staged_public: Path
    retired: Path


def key_paths(cfg: NodeConfig) -> KeyPaths:
    private = cfg.resolve(cfg.identity.private_key)
    public = cfg.resolve(cfg.identity.public_key)
    return KeyPaths(
        private=private,
        public=public,
        staged_private=private.with_name("next-" + private.name),
        staged_public=public.with_name("next-" + public.name),
        retired=private.parent / "retired",
    )


@dataclass(frozen=True)
class Staged:
    key_id: str
    public_path: Path


def stage_key(config_path: Path) -> Staged:
    """Writes a new key pair beside the current one; refuses if one is already staged."""
    paths = key_paths(load_config(config_path))
    if paths.staged_private.exists():
        staged = load_private_key(paths.staged_private)
        raise ConfigError(
            f"a new key is already staged (key id {key_id(staged)}); activate it with "
            "`consortium key activate` or delete it first",
            path=str(paths.staged_private),
        )
    load_private_key(paths.private)  # the current key must be there and private
    key = generate_key()
    write_private_key(paths.staged_private, key)
    write_public_key(paths.staged_public, key)
    return Staged(key_id(key), paths.staged_public)


@dataclass(frozen=True)
class Activated:
    old_key_id: str
    new_key_id: str
    retired_path: Path
    card_path: Path | None


def activate_key(config_path: Path) -> Activated:
    """Makes the staged key current, keeping the old private key under keys/retired/."""
    cfg = load_config(config_path)
    paths = key_paths(cfg)
    if not paths.staged_private.exists():
        raise ConfigError(
            "no staged key to activate; run `consortium key rotate` first",
            path=str(paths.staged_private),
        )
    new = load_private_key(paths.staged_private)
    old = load_private_key(paths.private)
    new_kid, old_kid = key_id(new), key_id(old)
    if cfg.federation is not None:
        _require_listed(cfg, new_kid)
    paths.retired.mkdir(mode=0o700, exist_ok=True)
    retired = paths.retired / f"{old_kid}.jwk"
    paths.private.replace(retired)
    paths.staged_private.replace(paths.private)
    if paths.staged_public.exists():
        paths.staged_public.replace(paths.public)
    else:
        write_public_key(paths.public, new)
    return Activated(old_kid, new_kid, retired, _rewrite_card(cfg, config_path))


def _require_listed(cfg: NodeConfig, kid: str) -> None:
    from consortium.federation.roster import load_verified_roster

    assert cfg.federation is not None
    admin = load_public_key(cfg.resolve(cfg.federation.admin_key))
    roster = load_verified_roster(cfg.resolve(cfg.federation.roster), [admin])
    member = roster.member(cfg.node.org_id)
    if member is None or member.key(kid) is None:
        raise ConfigError(
            f"the roster does not list key {kid} for {cfg.node.org_id} yet; ask the "
            "federation admin to run `consortium federation rotate-key` with "
            "keys/next-public.jwk, then activate",
            path=str(cfg.resolve(cfg.federation.roster)),
        )


def _rewrite_card(cfg: NodeConfig, config_path: Path) -> Path | None:
    """The agent card file `consortium init` wrote, now with the new key (if present)."""
    from consortium.node.setup import write_card_file

    if not (config_path.parent / "agent-card.json").exists():
        return None
    return write_card_file(cfg, config_path, load_public_key(key_paths(cfg).public))
