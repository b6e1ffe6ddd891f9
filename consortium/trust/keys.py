"""Organization identities: Ed25519 key pairs stored as JWKs, key ids as RFC 7638 thumbprints.

A private key file is created with mode 0600 and refused when others can read it.
Key material is never logged; only key ids are.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from jwcrypto import jwk
from jwcrypto.common import JWException

from consortium.errors import ConfigError


def generate_key() -> jwk.JWK:
    key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    key["kid"] = key.thumbprint()
    return key


def key_id(key: jwk.JWK) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    if key.get("kty") != "OKP":
        return str(key.thumbprint())
    # An OKP thumbprint covers crv, kty and x only, so they key the cache: it sits on
    # every signed message's path.
    public = (key.get("crv"), key.get("x"))
    kid = _THUMBPRINTS.get(public)
    if kid is None:
        kid = str(key.thumbprint())
        if len(_THUMBPRINTS) < 4096:
            _THUMBPRINTS[public] = kid
    return kid


_THUMBPRINTS: dict[tuple[Any, Any], str] = {}


def public_jwk(key: jwk.JWK) -> dict[str, Any]:
    data: dict[str, Any] = key.export_public(as_dict=True)
    data["kid"] = key_id(key)
    data["use"] = "sig"
    data["alg"] = "EdDSA"
    return data


def write_private_key(path: Path, key: jwk.JWK) -> None:
    """Writes the private JWK readable by its owner only; never overwrites a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            "a key already exists here; refusing to overwrite it", path=str(path)
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(key.export_private() + "\n")
    path.chmod(0o600)


def write_public_key(path: Path, key: jwk.JWK) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(public_jwk(key), indent=2) + "\n")


def load_private_key(path: Path) -> jwk.JWK:
    if not path.exists():
        raise ConfigError("private key file not found", path=str(path))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"private key is readable by others (mode {mode:04o}); run: chmod 600 {path}",
            path=str(path),
        )
    key = _read_jwk(path)
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not key.has_private:
        raise ConfigError("expected an Ed25519 private key (kty OKP, crv Ed25519)", path=str(path))
    return key


def load_public_key(path: Path) -> jwk.JWK:
    if not path.exists():
        raise ConfigError("public key file not found", path=str(path))
    key = _read_jwk(path)
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise ConfigError("expected an Ed25519 public key (kty OKP, crv Ed25519)", path=str(path))
    return key


def _read_jwk(path: Path) -> jwk.JWK:
    """The JWK in a file; ConfigError when it cannot be read or is not a JWK (jwcrypto
    raises its own JWException for text that is not JSON, or a JWK of no known type)."""
    try:
        return jwk.JWK.from_json(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the key file ({e.strerror})", path=str(path)) from None
    except (ValueError, TypeError, JWException) as e:
        raise ConfigError(f"not a valid JWK ({type(e).__name__})", path=str(path)) from None
