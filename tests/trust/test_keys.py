"""Organization keys (trust/keys.py): Ed25519 JWKs whose key id is the RFC 7638
thumbprint, private key files readable by their owner only and never overwritten, and a
clear ConfigError (never a traceback) for a key file that is missing, unreadable,
corrupt, of the wrong type, or public where a private key is needed."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from jwcrypto import jwk

from consortium.errors import ConfigError
from consortium.trust.keys import (
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_jwk,
    write_private_key,
    write_public_key,
)

# RFC 8037, appendix A.2 and A.3: an Ed25519 public key and its RFC 7638 thumbprint.
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def thumbprint(x: str) -> str:
    """RFC 7638 by hand: SHA-256 of the required members in lexicographic order."""
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def test_key_id_is_the_rfc_7638_thumbprint() -> None:
    assert key_id(jwk.JWK(kty="OKP", crv="Ed25519", x=RFC8037_X)) == RFC8037_KID
    key = generate_key()
    assert key_id(key) == key["kid"] == thumbprint(key["x"])
    # The same for the private key, its public half and a copy: the id names the key.
    public = jwk.JWK(**public_jwk(key))
    assert key_id(public) == key_id(jwk.JWK.from_json(key.export_private())) == key_id(key)
    assert key_id(generate_key()) != key_id(key)
    other_type = jwk.JWK.generate(kty="EC", crv="P-256")
    assert key_id(other_type) == other_type.thumbprint()


def test_public_jwk_holds_no_private_part() -> None:
    key = generate_key()
    data = public_jwk(key)
    assert "d" not in data
    assert data == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": key["x"],
        "kid": key_id(key),
        "use": "sig",
        "alg": "EdDSA",
    }


def test_private_key_round_trip_with_mode_0600(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "keys" / "private.jwk"
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert loaded.has_private and key_id(loaded) == key_id(key)
    assert loaded.export_private(as_dict=True) == key.export_private(as_dict=True)


def test_a_private_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "private.jwk"
    first = generate_key()
    write_private_key(path, first)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_private_key(path, generate_key())
    assert key_id(load_private_key(path)) == key_id(first)


def test_public_key_round_trip(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "public.jwk"
    write_public_key(path, key)
    assert json.loads(path.read_text()) == public_jwk(key)
    loaded = load_public_key(path)
    assert not loaded.has_private and key_id(loaded) == key_id(key)


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def refusal(load: object, path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load(path)  # type: ignore[operator]
    assert e.value.exit_code == 2 and e.value.path == str(path)
    return str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{}",
        "[1, 2]",
        '{"kty": "OKP"}',
        '{"kty": "OKP", "crv": "Ed25519", "x": "!"}',
    ],
)
def test_corrupt_key_files_are_refused_clearly(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "key.jwk", text)
    assert "not a valid JWK" in refusal(load_private_key, path)
    assert "not a valid JWK" in refusal(load_public_key, path)


def test_binary_garbage_is_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path / "key.jwk", b"\xff\xfe\x00garbage")
    assert "not a valid JWK" in refusal(load_private_key, path)


def test_missing_key_files_are_refused_clearly(tmp_path: Path) -> None:
    assert "private key file not found" in refusal(load_private_key, tmp_path / "none.jwk")
    assert "public key file not found" in refusal(load_public_key, tmp_path / "none.jwk")


def test_an_unreadable_key_file_is_refused_clearly(tmp_path: Path) -> None:
    directory = tmp_path / "key.jwk"
    directory.mkdir(mode=0o700)
    assert "cannot read the key file" in refusal(load_private_key, directory)
    assert "cannot read the key file" in refusal(load_public_key, directory)


def test_a_public_key_where_a_private_key_is_needed(tmp_path: Path) -> None:
    path = write(tmp_path / "public.jwk", json.dumps(public_jwk(generate_key())))
    assert "expected an Ed25519 private key" in refusal(load_private_key, path)


def test_keys_of_another_type_are_refused(tmp_path: Path) -> None:
    ec = jwk.JWK.generate(kty="EC", crv="P-256")
    path = write(tmp_path / "ec.jwk", ec.export_private())
    assert "expected an Ed25519 private key" in refusal(load_private_key, path)
    assert "expected an Ed25519 public key" in refusal(load_public_key, path)
    x25519 = jwk.JWK.generate(kty="OKP", crv="X25519")
    path = write(tmp_path / "x25519.jwk", x25519.export_private())
    assert "expected an Ed25519 private key" in refusal(load_private_key, path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_private_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "private.jwk"
    write_private_key(path, generate_key())
    path.chmod(mode)
    message = refusal(load_private_key, path)
    assert f"readable by others (mode {mode:04o})" in message and "chmod 600" in message
