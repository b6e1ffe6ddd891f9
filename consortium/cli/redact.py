"""`consortium redact preview | disclose | check`: what the policy sends a peer, and
redaction receipts (redaction/receipts.py).

`preview` shows a text as node.toml's `[redaction]` policy would send it to one member
(its roster attributes read from the federation's roster), without a node running: the
operator's check of a policy. Exit code 1 when the policy blocks the text.

`disclose` reads this node's disclosure store (DATA_DIR/redaction.sqlite3) and writes a
receipt (mode 0600) for one message it sent: the message as signed and sent, its
recipient, and the disclosures of the chosen spans only (by type or digest; all of them
only with --all). `check` is the auditor's side: it verifies the message's signature
against the roster, each disclosure against the message's signed digests, and that the
disclosed value is absent from what the peer received. Values are printed only with
--show-values. Bad input is one line and exit code 2; a receipt that does not verify,
exit code 1.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from consortium.cli.common import out, run
from consortium.errors import ConfigError

if TYPE_CHECKING:
    from a2a.types import a2a_pb2

    from consortium.federation.roster import Roster
    from consortium.node.receipts import ReceiptCheck
    from consortium.redaction.receipts import Disclosure

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")]
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def redact_preview(
    text: Annotated[str, typer.Argument(help="The text to check.")],
    config: ConfigOption,
    peer: Annotated[str, typer.Option("--peer", help="The member it would be sent to.")],
) -> None:
    r"""Show TEXT as this node's \[redaction] policy would send it to PEER."""
    from consortium.federation.roster import load_roster
    from consortium.node.config import load_config
    from consortium.redaction.policy import check_peers

    def go() -> int:
        cfg = load_config(config)
        policy = cfg.redaction
        if not policy.enabled:
            out.print("redaction is off ([redaction] enabled = false): sent as it is", markup=False)
            return 0
        attributes: dict[str, str] = {}
        if cfg.federation is not None:
            roster = load_roster(cfg.resolve(cfg.federation.roster))
            members = {m.org_id: m.org_id == cfg.node.org_id for m in roster.members}
            check_peers(policy, members, path=str(config))
            member = roster.member(peer)
            if member is None or member.org_id == cfg.node.org_id:
                raise ConfigError(f"{peer} is not another member of the roster", key="--peer")
            from consortium.node.redaction import attributes_of  # loads Presidio

            attributes = attributes_of(member)
        # Presidio and spaCy load only once the configuration is known to be good.
        from consortium.redaction.detector import Detector
        from consortium.redaction.pseudonyms import Vault
        from consortium.redaction.rewrite import rewrite

        actions = policy.for_peer(peer, attributes)
        done = rewrite(text, Detector(policy).detect(text), actions, Vault())
        if done.blocked:
            out.print(
                f"blocked for {peer}: {', '.join(done.blocked)} (the message would not be sent)",
                highlight=False,
                markup=False,
            )
            return 1
        out.print(done.text, highlight=False, markup=False)
        counts = Counter(f"{t} {a}" for t, a, _ in done.withheld)
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "nothing"
        out.print(f"withheld from {peer}: {summary}", highlight=False, markup=False)
        return 0

    raise typer.Exit(run(go))


def redact_disclose(
    message_id: Annotated[str, typer.Argument(help="The id of a message this node sent.")],
    config: ConfigOption,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="Disclose the spans of this entity type (repeatable)."),
    ] = None,
    digests: Annotated[
        list[str] | None,
        typer.Option("--digest", help="Disclose the one span with this digest (repeatable)."),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Disclose every span of the message.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Receipt file (default: receipt-MESSAGE_ID.json)."),
    ] = None,
) -> None:
    """Write a receipt disclosing chosen spans a sent message withheld (file mode 0600)."""
    from google.protobuf.json_format import MessageToDict

    from consortium.cli.stores import store_of
    from consortium.node.config import load_config
    from consortium.redaction.receipts import DisclosureStore

    def go() -> None:
        if everything and (types or digests):
            raise ConfigError("--all discloses every span; leave out --type and --digest")
        if not everything and not types and not digests:
            raise ConfigError(
                "choose what to disclose: --type TYPE, --digest DIGEST, or every span with --all"
            )
        target = output or _default_output(message_id)
        cfg = load_config(config)
        store = DisclosureStore(store_of(cfg, "redaction"), must_exist=True)
        try:
            receipt = store.get(message_id)
        finally:
            store.close()
        if receipt is None:
            raise ConfigError(f"no receipt for message {message_id!r}", key="MESSAGE_ID")
        chosen = (
            list(receipt.disclosures)
            if everything
            else _select(receipt.disclosures, types or [], digests or [])
        )
        data: dict[str, Any] = {
            "message": MessageToDict(receipt.message),
            "recipient": receipt.recipient,
            "disclosures": [d.encoded for d in chosen],
        }
        _write_private(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        out.print(
            f"wrote {target}: {len(chosen)} of {len(receipt.disclosures)} span(s) "
            f"({_summary(chosen)}) of message {message_id} sent to {receipt.recipient}",
            highlight=False,
            markup=False,
        )

    run(go)


def redact_check(
    receipt: Annotated[
        Path | None, typer.Argument(help="A receipt file from `consortium redact disclose`.")
    ] = None,
    roster: Annotated[
        Path, typer.Option("--roster", help="The federation roster (federation.toml).")
    ] = Path("federation.toml"),
    message: Annotated[
        Path | None,
        typer.Option("--message", help="A signed message (protobuf JSON), instead of RECEIPT."),
    ] = None,
    disclosures: Annotated[
        list[str] | None,
        typer.Option("--disclosure", help="An encoded disclosure, with --message (repeatable)."),
    ] = None,
    admin_pubkey: Annotated[
        Path | None,
        typer.Option(help="Also check the roster's signature under this admin public key."),
    ] = None,
    show_values: Annotated[
        bool, typer.Option("--show-values", help="Print the disclosed values.")
    ] = False,
) -> None:
    """Verify disclosures against a signed message: exit 0 when every one verifies."""
    from consortium.node.receipts import check_receipt

    def go() -> ReceiptCheck:
        signed, encoded = _read_input(receipt, message, disclosures or [])
        members = _load_roster(roster, admin_pubkey)
        return check_receipt(signed, encoded, members)

    result = run(go)
    _print(result, show_values)
    if not result.ok:
        raise typer.Exit(1)


def _default_output(message_id: str) -> Path:
    if _SAFE_NAME.fullmatch(message_id) is None:
        raise ConfigError("this message id cannot name a file; choose one with --output")
    return Path(f"receipt-{message_id}.json")


def _select(
    disclosures: tuple[Disclosure, ...], types: list[str], digests: list[str]
) -> list[Disclosure]:
    have_types = {d.entity_type for d in disclosures}
    have_digests = {d.digest for d in disclosures}
    for t in types:
        if t not in have_types:
            raise ConfigError(
                f"the message has no {t} span (it has: {_summary(disclosures) or 'none'})",
                key="--type",
            )
    for digest in digests:
        if digest not in have_digests:
            raise ConfigError(f"the message has no span with digest {digest}", key="--digest")
    return [d for d in disclosures if d.entity_type in types or d.digest in digests]


def _summary(disclosures: tuple[Disclosure, ...] | list[Disclosure]) -> str:
    counts = Counter(d.entity_type for d in disclosures)
    return ", ".join(f"{t} x{n}" for t, n in sorted(counts.items()))


def _write_private(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        path.chmod(0o600)
    except OSError as e:
        raise ConfigError(f"cannot write the receipt: {e.strerror}", path=str(path)) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", path=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory", path=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read the {what}: {e.strerror}", path=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} is not UTF-8 text", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"the {what} is not JSON ({e.msg}, line {e.lineno})", path=str(path)
        ) from None


def _parse_message(data: Any, path: Path, key: str | None) -> a2a_pb2.Message:
    from a2a.types import a2a_pb2
    from google.protobuf.json_format import ParseDict, ParseError

    if not isinstance(data, dict):
        raise ConfigError("not an A2A message (a JSON object)", path=str(path), key=key)
    try:
        return ParseDict(data, a2a_pb2.Message())
    except (ParseError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"not an A2A message: {first}", path=str(path), key=key) from None


def _read_input(
    receipt: Path | None, message: Path | None, disclosures: list[str]
) -> tuple[a2a_pb2.Message, list[str]]:
    """The signed message and the encoded disclosures: from a receipt file, or from
    --message and --disclosure. Each disclosure must be well formed."""
    from consortium.redaction.receipts import ReceiptError, parse_disclosure

    if receipt is not None and (message is not None or disclosures):
        raise ConfigError("give a RECEIPT file, or --message with --disclosure, not both")
    if receipt is not None:
        source = receipt
        data = _read_json(receipt, "receipt")
        if not isinstance(data, dict) or "message" not in data or "disclosures" not in data:
            raise ConfigError(
                "not a receipt (a JSON object with message and disclosures)", path=str(receipt)
            )
        signed = _parse_message(data["message"], receipt, "message")
        encoded = data["disclosures"]
        if not isinstance(encoded, list) or not all(isinstance(e, str) for e in encoded):
            raise ConfigError("not a list of strings", path=str(receipt), key="disclosures")
    elif message is not None:
        source = message
        signed = _parse_message(_read_json(message, "message file"), message, None)
        encoded = disclosures
    else:
        raise ConfigError("give a RECEIPT file, or --message FILE with --disclosure ENCODED")
    if not encoded:
        raise ConfigError("there is no disclosure to check", path=str(source))
    for i, e in enumerate(encoded):
        try:
            parse_disclosure(e)
        except ReceiptError as error:
            raise ConfigError(f"disclosure {i + 1}: {error}", path=str(source)) from None
    return signed, list(encoded)


def _load_roster(path: Path, admin_pubkey: Path | None) -> Roster:
    from consortium.federation.roster import load_roster, load_verified_roster
    from consortium.trust.keys import load_public_key

    if admin_pubkey is None:
        return load_roster(path)
    return load_verified_roster(path, [load_public_key(admin_pubkey)])


def _print(result: ReceiptCheck, show_values: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    claims = result.claims
    if claims is not None:
        when = datetime.fromtimestamp(claims.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        about = f" ({claims.sender} -> {claims.recipient}, message {claims.message_id}, {when})"
    else:
        about = ""
    verdict = "ok" if result.signature_ok else f"FAILED: {result.signature_reason}"
    out.print(Text(f"signature: {verdict}{about}"))
    table = Table()
    for column in ("#", "type", "digest", "result", *(("value",) if show_values else ())):
        table.add_column(column, overflow="fold")
    for i, d in enumerate(result.disclosures, start=1):
        row = [
            Text(str(i)),
            Text(d.entity_type or "?"),
            Text(d.digest or "?"),
            Text(("ok: " if d.ok else "FAILED: ") + d.reason),
        ]
        if show_values:
            row.append(Text(d.value))
        table.add_row(*row)
    out.print(table)
    verified = sum(d.ok for d in result.disclosures)
    out.print(
        Text(
            f"{'verified' if result.ok else 'NOT verified'}: "
            f"{verified} of {len(result.disclosures)} disclosure(s)"
        )
    )
