"""Documents signed by a federation's admin key(s): the roster (federation.toml) and the
routing-policy artifact.

A document lists its signatures in its own `signatures` field; each is a detached JWS
(EdDSA) over the RFC 8785 canonical JSON of `signed_content()` (the document without its
signatures), so a signature does not depend on how the file is formatted. A document is
accepted when at least one signature verifies under a trusted admin key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self, TypeVar

from jwcrypto import jwk

from consortium.errors import ConfigError
from consortium.trust.jws import SignatureError, sign_detached, verify_detached
from consortium.trust.keys import key_id


class DocumentError(ConfigError):
    """An admin-signed document is unsigned, or none of its signatures verifies."""


class AdminSigned(Protocol):
    """A document the admin signs (a pydantic model with a `signatures` field)."""

    @property
    def signatures(self) -> list[str]: ...

    def signed_content(self) -> dict[str, Any]:
        """What the signatures cover: everything but the signatures."""
        ...

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Self: ...


D = TypeVar("D", bound=AdminSigned)


def sign_document(document: D, admin_keys: Sequence[jwk.JWK]) -> D:
    """A copy of the document signed by every given admin key (any earlier signatures
    are dropped)."""
    content = document.signed_content()
    return document.model_copy(
        update={"signatures": [sign_detached(content, k) for k in admin_keys]}
    )


def verify_document(
    document: AdminSigned, trusted_admin_keys: Sequence[jwk.JWK], *, what: str
) -> str:
    """The key id of a trusted admin key whose signature verifies; raises DocumentError
    (`what` names the document in its message: "the {what} is not signed")."""
    if not document.signatures:
        raise DocumentError(f"the {what} is not signed")
    by_kid = {key_id(k): k for k in trusted_admin_keys}
    content = document.signed_content()
    problems: list[str] = []
    for token in document.signatures:
        try:
            header = verify_detached(token, content, by_kid.get)
        except SignatureError as e:
            problems.append(str(e))
            continue
        return str(header["kid"])
    raise DocumentError("no valid admin signature: " + "; ".join(problems))
