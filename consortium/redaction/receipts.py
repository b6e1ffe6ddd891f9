"""Verifiable redaction receipts, in the style of SD-JWT (RFC 9901).

For each span it redacts from a message to a peer, the origin makes a *disclosure*: the
JSON array `[salt, entity type, value]` (RFC 9901 section 4.2.1, the object-property
form, with the entity type in the claim-name slot), base64url-encoded without padding.
The signed message carries only the disclosures' SHA-256 digests (section 4.2.3: the
hash of the ASCII of the encoded disclosure, base64url without padding), under the
metadata key `REDACTION_KEY`:

    {"_sd_alg": "sha-256", "_sd": [digest, ...], "entities": {"PERSON": 2, ...}}

The digests are sorted, so their order tells nothing of the order of the spans (RFC 9901
recommends shuffling or sorting). Each salt is 16 random bytes (128 bits, the RFC's
recommended minimum), so a digest cannot be confirmed by guessing a value (a name from a
list, a phone number) without the disclosure.

The signature covers this metadata: `trust.claims` signs the RFC 8785 canonical JSON of
the message's whole protobuf JSON form, parts and every metadata key, except only the
signature field itself (`consortium.signature`). So the digest list cannot be changed
after signing without breaking the signature. (This module does not import `trust`;
`node.receipts` checks signatures.)

The origin keeps the disclosures in its `DisclosureStore` (the node's "redaction" store:
`DATA_DIR/redaction.sqlite3`, mode 0600, or PostgreSQL), next to the signed message as
sent. Later it can hand an auditor one
disclosure (one span) with the signed message: the auditor checks the signature, finds
the disclosure's digest in the signed list, and sees that the value is absent from what
the peer received — without learning any other span, whose disclosures stay with the
origin.

JSON encoding: `json.dumps([salt, type, value], separators=(",", ":"),
ensure_ascii=False)`, UTF-8. The RFC lets an issuer pick any JSON spelling, since the
digest is over the encoded string as sent; this one is compact and round-trips exactly,
and `parse_disclosure` accepts only it, so one disclosure has exactly one encoding and
one digest (as `trust.jws` accepts only canonical base64url). Nothing here logs values.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    literal_column,
    select,
)
from sqlalchemy import exc as sa_exc

from consortium import b64url
from consortium.errors import ConfigError, ConsortiumError
from consortium.storage.database import Database
from consortium.storage.migrations import open_sqlite
from consortium.storage.sql import insert

REDACTION_KEY = "consortium.redaction"
SD_ALG = "sha-256"
SALT_BYTES = 16
MAX_DIGESTS = 10_000

_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_DIGEST_CHARS = 43  # unpadded base64url of 32 bytes


class ReceiptError(ConsortiumError, ValueError):
    """A disclosure, redaction metadata or receipt is malformed; the message is one line
    naming what is wrong."""

    exit_code = 2


_b64 = b64url.encode


def _unb64(text: str, what: str) -> bytes:
    """The bytes of canonical unpadded base64url `text`; ReceiptError otherwise."""
    try:
        return b64url.decode(text)
    except b64url.NotBase64url as e:
        raise ReceiptError(f"{what} is {e}") from None


def digest_of(encoded: str) -> str:
    """RFC 9901 section 4.2.3: base64url (unpadded) SHA-256 of the ASCII encoded form."""
    return _b64(hashlib.sha256(encoded.encode("ascii")).digest())


@dataclass(frozen=True)
class Disclosure:
    """One redacted span: a salt, its entity type and the value withheld."""

    salt: str
    entity_type: str
    value: str

    def __repr__(self) -> str:  # never show the value in logs or tracebacks
        return f"Disclosure(entity_type={self.entity_type!r}, digest={self.digest!r})"

    @property
    def encoded(self) -> str:
        """base64url (unpadded) of the UTF-8 compact JSON `[salt, entity_type, value]`."""
        array = json.dumps(
            [self.salt, self.entity_type, self.value], separators=(",", ":"), ensure_ascii=False
        )
        try:
            return _b64(array.encode("utf-8"))
        except UnicodeEncodeError:
            raise ReceiptError("the disclosed value is not valid Unicode text") from None

    @property
    def digest(self) -> str:
        """What the signed message carries for this span."""
        return digest_of(self.encoded)


def _check_fields(salt: str, entity_type: str, value: str) -> None:
    if len(_unb64(salt, "the disclosure's salt")) < SALT_BYTES:
        raise ReceiptError(f"the disclosure's salt is shorter than {SALT_BYTES * 8} bits")
    if _TYPE.fullmatch(entity_type) is None:
        raise ReceiptError(
            f"the disclosure's entity type {entity_type[:64]!r} is not UPPER_SNAKE "
            "(A-Z, 0-9, '_', starting with a letter, at most 64 characters)"
        )
    if not value:
        raise ReceiptError("the disclosure's value is empty")


def make_disclosure(entity_type: str, value: str) -> Disclosure:
    """A disclosure of `value` (of `entity_type`) with a fresh 128-bit salt."""
    disclosure = Disclosure(_b64(secrets.token_bytes(SALT_BYTES)), entity_type, value)
    _check_fields(disclosure.salt, entity_type, value)
    _ = disclosure.encoded  # raises ReceiptError for a value UTF-8 cannot encode
    return disclosure


def parse_disclosure(encoded: str) -> Disclosure:
    """The disclosure `encoded` stands for; raises ReceiptError unless it is canonical
    unpadded base64url of UTF-8 compact JSON, an array of exactly three strings (salt of
    at least 128 bits, UPPER_SNAKE entity type, non-empty value), spelled exactly as
    `Disclosure.encoded` spells it."""
    if not isinstance(encoded, str) or not encoded:
        raise ReceiptError("the disclosure is empty or not a string")
    raw = _unb64(encoded, "the disclosure")
    try:
        array = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ReceiptError("the disclosure is not UTF-8") from None
    except ValueError:
        raise ReceiptError("the disclosure is not JSON") from None
    if not isinstance(array, list) or len(array) != 3:
        raise ReceiptError("the disclosure is not a JSON array of 3 elements [salt, type, value]")
    if not all(isinstance(item, str) for item in array):
        raise ReceiptError("the disclosure's salt, type and value are not all strings")
    salt, entity_type, value = array
    _check_fields(salt, entity_type, value)
    disclosure = Disclosure(salt, entity_type, value)
    if disclosure.encoded != encoded:
        raise ReceiptError("the disclosure is not in canonical compact JSON form")
    return disclosure


@dataclass(frozen=True)
class RedactionClaims:
    """What a signed message states of its redactions: the digests of its disclosures
    and how many spans of each entity type were redacted."""

    digests: tuple[str, ...]
    entities: Mapping[str, int]
    sd_alg: str = SD_ALG


def redaction_metadata(
    disclosures: Sequence[Disclosure], counts: Mapping[str, int]
) -> dict[str, Any]:
    """The value of the message's `REDACTION_KEY` metadata: the disclosures' digests,
    sorted, and the per-type counts."""
    digests = sorted(d.digest for d in disclosures)
    if len(set(digests)) != len(digests):
        raise ReceiptError("two disclosures have the same digest")
    entities = _entities(dict(counts))
    return {"_sd_alg": SD_ALG, "_sd": digests, "entities": entities}


def _entities(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ReceiptError(f"{REDACTION_KEY}.entities is not an object")
    out: dict[str, int] = {}
    for name, count in sorted(raw.items()):
        if not isinstance(name, str) or _TYPE.fullmatch(name) is None:
            raise ReceiptError(f"{REDACTION_KEY}.entities: {str(name)[:64]!r} is not UPPER_SNAKE")
        # A protobuf Struct holds every number as a double: 2 comes back as 2.0.
        integral = isinstance(count, int) or (isinstance(count, float) and count.is_integer())
        if isinstance(count, bool) or not integral or not 0 <= count <= 2**31:
            raise ReceiptError(f"{REDACTION_KEY}.entities.{name} is not a non-negative integer")
        out[name] = int(count)
    return out


def read_redaction_metadata(metadata: Mapping[str, Any] | None) -> RedactionClaims | None:
    """The redaction claims in a message's metadata (its protobuf JSON form), or None
    when it carries none. Raises ReceiptError when they are malformed: another `_sd_alg`,
    a digest that is not a base64url SHA-256, a repeated digest, an unknown key."""
    if not metadata or REDACTION_KEY not in metadata:
        return None
    raw = metadata[REDACTION_KEY]
    if not isinstance(raw, Mapping):
        raise ReceiptError(f"metadata {REDACTION_KEY} is not an object")
    unknown = sorted(set(raw) - {"_sd_alg", "_sd", "entities"})
    if unknown:
        raise ReceiptError(f"metadata {REDACTION_KEY} has an unknown key {unknown[0]!r}")
    if raw.get("_sd_alg") != SD_ALG:
        raise ReceiptError(f"{REDACTION_KEY}._sd_alg is not {SD_ALG!r}")
    digests = raw.get("_sd")
    if not isinstance(digests, list) or len(digests) > MAX_DIGESTS:
        raise ReceiptError(f"{REDACTION_KEY}._sd is not a list of at most {MAX_DIGESTS} digests")
    for item in digests:
        if not isinstance(item, str) or len(item) != _DIGEST_CHARS:
            raise ReceiptError(f"{REDACTION_KEY}._sd holds something that is not a SHA-256 digest")
        _unb64(item, f"a digest in {REDACTION_KEY}._sd")
    if len(set(digests)) != len(digests):
        raise ReceiptError(f"{REDACTION_KEY}._sd lists a digest twice")
    return RedactionClaims(tuple(digests), _entities(raw.get("entities")))


@dataclass(frozen=True)
class StoredReceipt:
    """A message as it was signed and sent, and the disclosures of what it withheld (in
    the order of the spans in the text)."""

    message_id: str
    task_id: str
    recipient: str
    message: a2a_pb2.Message
    disclosures: tuple[Disclosure, ...]
    created_at: float


METADATA = MetaData()
RECEIPTS = Table(
    "receipts",
    METADATA,
    Column("message_id", Text, primary_key=True),
    Column("task_id", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("message", LargeBinary, nullable=False),
    Column("created_at", Float(precision=53), nullable=False),
    Index("receipts_by_task", "task_id", "created_at"),
)
DISCLOSURES = Table(
    "disclosures",
    METADATA,
    Column("message_id", Text, ForeignKey("receipts.message_id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("disclosure", Text, nullable=False),
    PrimaryKeyConstraint("message_id", "position"),
)


class DisclosureStore:
    """The disclosures of the spans this node redacted, per message it sent, in the
    node's "redaction" store: `DATA_DIR/redaction.sqlite3` (mode 0600: they hold the
    values withheld), or the schema `consortium_redaction` of the PostgreSQL database the
    node's replicas share. `db`: that Database, or a Path: that SQLite file (tools, tests,
    `consortium redact disclose`), which `must_exist` refuses to create. Safe to call
    from any thread.

    Replicas: each message id is recorded once (an insert that conflicts on it is
    refused), whichever replica sent it, and every replica reads every receipt, so an
    auditor's disclosure can be made through any of them. `prune` (`[redaction]
    receipts_days`) may run on several replicas at once: each deletes what is old.

    What deletion means: on SQLite the pruned rows are overwritten in the file
    (`secure_delete`), not left in free pages. On PostgreSQL a DELETE only marks the rows
    dead: their bytes stay in the table's pages until VACUUM reuses the space (and
    nothing zeroes them), and in the write-ahead log, its archive, streaming replicas and
    backups for as long as those are kept. An organization that must not keep withheld
    values past `receipts_days` keeps those bounded as well (and the disks encrypted)."""

    def __init__(
        self,
        db: Database | Path,
        *,
        must_exist: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._owned = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
            return
        self.path = db
        if must_exist and not db.is_file():
            raise ConfigError(
                "no redaction receipts (the node has redacted nothing yet)", path=str(db)
            )
        try:
            self.db = open_sqlite(db, "redaction")
        except sa_exc.DatabaseError as e:
            raise ConfigError(f"not a usable receipts database ({e.orig})", path=str(db)) from None
        except OSError as e:
            raise ConfigError(
                f"cannot open the receipts database ({e.strerror})", path=str(db)
            ) from None

    @property
    def remote(self) -> bool:
        """Whether the store is a server's (PostgreSQL): its calls are worth making off
        the event loop."""
        return self.db.dialect != "sqlite"

    def close(self) -> None:
        if self._owned:
            self.db.dispose()

    def record(
        self,
        message_id: str,
        task_id: str,
        recipient: str,
        signed_message: a2a_pb2.Message,
        disclosures: Sequence[Disclosure],
    ) -> None:
        """Keeps `signed_message` as sent and its disclosures. Refuses (ReceiptError) a
        message id that differs from the message's, one recorded before, and disclosures
        whose digests the message does not list."""
        if message_id != signed_message.message_id:
            raise ReceiptError("the message id differs from the signed message's id")
        claims = read_redaction_metadata(MessageToDict(signed_message.metadata))
        listed = set() if claims is None else set(claims.digests)
        if any(d.digest not in listed for d in disclosures):
            raise ReceiptError(f"message {message_id} does not list every disclosure's digest")
        stmt = (
            insert(self.db, RECEIPTS)
            .values(
                message_id=message_id,
                task_id=task_id,
                recipient=recipient,
                message=signed_message.SerializeToString(),
                created_at=self._clock(),
            )
            .on_conflict_do_nothing()
            .returning(RECEIPTS.c.message_id)  # a row only when this call stored it
        )
        with self.db.begin() as conn:
            if conn.execute(stmt).first() is None:
                raise ReceiptError(f"message {message_id} is recorded already")
            if disclosures:
                conn.execute(
                    DISCLOSURES.insert(),
                    [
                        {"message_id": message_id, "position": i, "disclosure": d.encoded}
                        for i, d in enumerate(disclosures)
                    ],
                )

    def get(self, message_id: str) -> StoredReceipt | None:
        """The receipt of the message with `message_id`, or None."""
        with self.db.connect() as conn:
            row = conn.execute(select(RECEIPTS).where(RECEIPTS.c.message_id == message_id)).first()
            rows = conn.execute(
                select(DISCLOSURES.c.disclosure)
                .where(DISCLOSURES.c.message_id == message_id)
                .order_by(DISCLOSURES.c.position)
            ).all()
        if row is None:
            return None
        try:
            message = a2a_pb2.Message.FromString(bytes(row.message))
        except DecodeError:
            raise ConfigError(
                f"receipt {message_id} holds no readable message", path=self.db.where
            ) from None
        return StoredReceipt(
            message_id=message_id,
            task_id=str(row.task_id),
            recipient=str(row.recipient),
            message=message,
            disclosures=tuple(parse_disclosure(str(r[0])) for r in rows),
            created_at=float(row.created_at),
        )

    def prune(self, before: float) -> int:
        """Forgets the receipts (messages and disclosures) recorded before `before`, a
        time; how many. An auditor can no longer be shown what they withheld (see the
        class docstring for what deletion means on each database)."""
        old = select(RECEIPTS.c.message_id).where(RECEIPTS.c.created_at < before)
        with self.db.begin() as conn:
            if conn.dialect.name == "sqlite":
                # A pruned disclosure's value is overwritten, not left in a free page.
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            conn.execute(delete(DISCLOSURES).where(DISCLOSURES.c.message_id.in_(old)))
            n = conn.execute(delete(RECEIPTS).where(RECEIPTS.c.created_at < before)).rowcount
        return int(n)

    def for_task(self, task_id: str) -> list[str]:
        """The ids of the messages recorded for `task_id`, oldest first (ties: in the
        order recorded on SQLite, by id on PostgreSQL, which keeps no row order)."""
        tie = literal_column("rowid") if self.db.dialect == "sqlite" else RECEIPTS.c.message_id
        with self.db.connect() as conn:
            rows = conn.execute(
                select(RECEIPTS.c.message_id)
                .where(RECEIPTS.c.task_id == task_id)
                .order_by(RECEIPTS.c.created_at, tie)
            ).all()
        return [str(r[0]) for r in rows]
