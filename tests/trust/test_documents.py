"""Admin-signed documents (trust/documents.py): the roster and the routing-policy artifact
are signed and verified by the one implementation; tampering, unknown admin keys and
missing signatures are refused; files signed before issue 11 still verify and re-sign to
the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from jwcrypto import jwk

from consortium.errors import ConfigError
from consortium.federation.roster import (
    Member,
    MemberKey,
    Roster,
    RosterError,
    load_roster,
    load_verified_roster,
    sign_roster,
    verify_roster,
    write_roster,
)
from consortium.learning.policy import (
    FeatureSpec,
    PolicyArtifact,
    PolicyError,
    load_policy,
    sign_policy,
    verify_policy,
    write_policy,
)
from consortium.trust.documents import DocumentError, sign_document, verify_document
from consortium.trust.keys import generate_key, key_id, public_jwk

DATA = Path(__file__).parent.parent / "data" / "trust"


def public(key: jwk.JWK) -> jwk.JWK:
    return jwk.JWK(**public_jwk(key))


def roster() -> Roster:
    pub = public_jwk(generate_key())
    member = Member(org_id="acme", keys=[MemberKey(kid=pub["kid"], x=pub["x"])])
    return Roster(federation_id="fed", name="Fed", members=[member])


def policy() -> PolicyArtifact:
    spec = FeatureSpec(names=["a", "b"], mean=[0.0, 1.0], scale=[1.0, 2.0])
    return PolicyArtifact(version="v1", features=spec, weights=[0.5, -0.5], intercept=0.1)


def test_roster_and_policy_are_signed_by_the_one_implementation() -> None:
    admin = generate_key()
    signed_roster = sign_roster(roster(), [admin])
    signed_policy = sign_policy(policy(), [admin])
    # The same signatures as the generic function makes (Ed25519 is deterministic).
    assert sign_document(signed_roster, [admin]).signatures == signed_roster.signatures
    assert sign_document(signed_policy, [admin]).signatures == signed_policy.signatures
    assert signed_roster.issued_at  # a roster is stamped when signed
    for document, what in ((signed_roster, "roster"), (signed_policy, "policy artifact")):
        assert verify_document(document, [public(admin)], what=what) == key_id(admin)
    assert verify_roster(signed_roster, [public(admin)]) == key_id(admin)
    assert verify_policy(signed_policy, [public(admin)]) == key_id(admin)


def test_signing_replaces_earlier_signatures_and_every_key_signs() -> None:
    first, second = generate_key(), generate_key()
    once = sign_document(policy(), [first])
    twice = sign_document(once, [first, second])
    assert len(twice.signatures) == 2 and twice.signatures[0] == once.signatures[0]
    assert verify_document(twice, [public(second)], what="policy artifact") == key_id(second)


def test_tampering_after_signing_is_detected() -> None:
    admin = generate_key()
    signed = sign_roster(roster(), [admin])
    suspended = [m.model_copy(update={"status": "suspended"}) for m in signed.members]
    with pytest.raises(RosterError, match="no valid admin signature"):
        verify_roster(signed.model_copy(update={"members": suspended}), [public(admin)])
    artifact = sign_policy(policy(), [admin])
    with pytest.raises(PolicyError, match="no valid admin signature"):
        verify_policy(artifact.model_copy(update={"weights": [0.5, 0.5]}), [public(admin)])


def test_a_signature_over_another_document_is_refused() -> None:
    admin = generate_key()
    roster_signature = sign_roster(roster(), [admin]).signatures
    borrowed = policy().model_copy(update={"signatures": roster_signature})
    with pytest.raises(DocumentError, match="no valid admin signature"):
        verify_document(borrowed, [public(admin)], what="policy artifact")


def test_wrong_or_unknown_admin_keys_are_refused() -> None:
    admin, other = generate_key(), generate_key()
    signed = sign_roster(roster(), [other])
    with pytest.raises(RosterError, match="no valid admin signature") as e:
        verify_roster(signed, [public(admin)])
    assert f"unknown signing key {key_id(other)}" in str(e.value)
    with pytest.raises(PolicyError, match="no valid admin signature"):
        verify_policy(sign_policy(policy(), [other]), [public(admin)])
    with pytest.raises(DocumentError, match="no valid admin signature"):
        verify_document(signed, [], what="roster")
    # One signature by a trusted admin among others is enough; its key id is returned.
    both = sign_roster(roster(), [other, admin])
    assert verify_roster(both, [public(admin)]) == key_id(admin)


def test_unsigned_documents_are_refused_by_name() -> None:
    with pytest.raises(RosterError, match=r"^the roster is not signed$"):
        verify_roster(roster(), [public(generate_key())])
    with pytest.raises(PolicyError, match=r"^the policy artifact is not signed$"):
        verify_policy(policy(), [public(generate_key())])
    with pytest.raises(DocumentError, match=r"^the widget is not signed$"):
        verify_document(policy(), [], what="widget")
    assert issubclass(DocumentError, ConfigError)  # the CLI prints one line, exit code 2


def compat_admin() -> jwk.JWK:
    return jwk.JWK.from_json((DATA / "admin.jwk").read_text())


def test_a_roster_signed_before_the_move_verifies_and_re_signs_to_the_same_bytes(
    tmp_path: Path,
) -> None:
    admin = compat_admin()
    loaded = load_verified_roster(DATA / "federation.toml", [public(admin)])
    assert loaded.version == 3 and [m.org_id for m in loaded.members] == ["acme", "globex"]
    assert sign_document(loaded, [admin]) == loaded
    unsigned = load_roster(DATA / "federation.toml").model_copy(update={"signatures": []})
    write_roster(tmp_path / "federation.toml", sign_document(unsigned, [admin]))
    assert (tmp_path / "federation.toml").read_bytes() == (DATA / "federation.toml").read_bytes()


def test_a_policy_signed_before_the_move_verifies_and_re_signs_to_the_same_bytes(
    tmp_path: Path,
) -> None:
    admin = compat_admin()
    loaded = load_policy(DATA / "policy.json", [public(admin)])
    assert loaded.version == "compat-1"
    assert sign_policy(loaded, [admin]) == loaded
    write_policy(tmp_path / "policy.json", sign_policy(loaded, [admin]))
    assert (tmp_path / "policy.json").read_bytes() == (DATA / "policy.json").read_bytes()
    with pytest.raises(PolicyError, match="no valid admin signature"):
        load_policy(DATA / "policy.json", [public(generate_key())])
