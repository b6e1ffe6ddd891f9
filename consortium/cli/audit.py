"""`consortium audit verify | export`: an auditor's tools over organizations' audit logs
(trust/audit/log.py).

`verify DIR` checks one organization's log (DIR is the organization's directory, where its
node.toml is): the database, every entry against its leaf hash, every checkpoint's
signature (under the keys the organization held at the time, from every roster version
it archived) and root, every cosignature, witnessing as `[audit] witnessed_by` asks, and,
with `--witness OTHER_DIR`, what other members recorded cosigning of this log (a fork
or a rollback). Exit 0 only when everything holds; 1 with findings; 2 for bad input.
Nothing read is modified. The log is where the node keeps it (node.toml's `[storage]`):
its SQLite file, or the PostgreSQL database its replicas share (read as one snapshot).

`export DIR` writes the log as JSON lines for other tools.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from consortium.cli.common import out, run
from consortium.errors import ConfigError

if TYPE_CHECKING:
    from consortium.node.config import NodeConfig
    from consortium.trust.audit.verify import LogReport

OrgDir = Annotated[Path, typer.Argument(help="The organization's directory (its node.toml).")]


def _config(directory: Path) -> NodeConfig:
    from consortium.node.config import load_config

    path = directory / "node.toml" if directory.is_dir() else directory
    if not path.is_file():
        raise ConfigError("no node.toml here (give the organization's directory)", path=str(path))
    cfg = load_config(path)
    if cfg.federation is None:
        raise ConfigError("this node has no [federation]: it keeps no audit log", path=str(path))
    return cfg


def audit_verify(
    directory: OrgDir,
    witness: Annotated[
        list[Path] | None,
        typer.Option(
            "--witness", help="Another member's directory: check what it cosigned (repeatable)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify one organization's audit log: exit 0 only when every check holds."""
    from consortium.node.audit import load_history, verify_organization

    def go() -> tuple[LogReport, list[str]]:
        cfg = _config(directory)
        history, skipped = load_history(cfg)
        federation_id = history.latest.federation_id
        witnesses = []
        for other in witness or []:
            other_cfg = _config(other)
            if history.latest.member(other_cfg.node.org_id) is None:
                raise ConfigError(
                    f"{other_cfg.node.org_id} is not a member of {federation_id}", key="--witness"
                )
            witnesses.append(other_cfg)
        report, unread = verify_organization(cfg, history, witnesses)
        if unread:
            raise ConfigError(unread[0], key="--witness")
        return report, skipped

    report, skipped = run(go)
    if as_json:
        out.print_json(json.dumps(_as_dict(report, skipped)))
    else:
        _print(report, skipped)
    if not report.ok:
        raise typer.Exit(1)


def _as_dict(report: LogReport, skipped: list[str]) -> dict[str, object]:
    return {
        "origin": report.origin,
        "org": report.org,
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "latest_checkpoint": report.latest_checkpoint,
        "witnessed_size": report.witnessed_size,
        "cosigners": {str(k): v for k, v in sorted(report.cosigners.items())},
        "findings": [
            {"severity": f.severity, "where": f.where, "what": f.what} for f in report.findings
        ],
        "rosters_skipped": skipped,
    }


def _print(report: LogReport, skipped: list[str]) -> None:
    cosigned = sum(1 for names in report.cosigners.values() if names)
    out.print(
        f"audit log of {report.org} ({report.origin}): {report.entries} entries, "
        f"{report.checkpoints} checkpoints (latest at {report.latest_checkpoint}), "
        f"{cosigned} cosigned",
        highlight=False,
    )
    for line in skipped:
        out.print(f"  warning: archived roster left out: {line}", highlight=False)
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        out.print(f"  [{colour}]{f.severity}[/{colour}]: {f.where}: {f.what}", highlight=False)
    out.print("verified" if report.ok else "[red]FAILED[/red]", highlight=False)


def audit_export(
    directory: OrgDir,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write one organization's audit log as JSON lines (entries, then checkpoints); each
    entry line is {"entry":BODY}, BODY the entry's bytes as hashed."""
    from consortium.node.audit import log_file
    from consortium.trust.audit.verify import export_lines

    def go() -> int:
        cfg = _config(directory)
        location = cfg.storage_location()
        where = location.shown if location.directory is None else str(cfg.audit_path)
        with log_file(cfg) as path:
            if path is None or not path.is_file():
                raise ConfigError("no audit log here", path=where)
            # Bytes, whatever the locale: each entry as it was hashed.
            sink = output.open("wb") if output is not None else sys.stdout.buffer
            n = 0
            try:
                for line in export_lines(path):
                    sink.write(line + b"\n")
                    n += 1
            except (OSError, sqlite3.Error) as e:
                raise ConfigError(f"cannot read the audit log: {e}", path=where) from None
            finally:
                if output is not None:
                    sink.close()
                else:
                    sink.flush()
        return n

    run(go)
