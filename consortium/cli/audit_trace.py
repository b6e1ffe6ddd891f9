"""`consortium audit trace`: rebuild one task's path across organizations from their
exported spans, audit logs and task stores, and check every hop (node/audit_trace.py).

`consortium audit trace TRACE_ID --org DIR [--org DIR ...] [--task TASK_ID] [--json]
[--html FILE]`: TRACE_ID may be left out when --task names the task (its trace is the
one whose spans or entries carry that task id). The terminal gets a tree of hops; --json
one JSON object; --html a self-contained report whose timeline a browser draws. Exit 0
when every hop and every log verifies, 1 with findings, 2 for bad input. Nothing read
is modified; no message text is read or printed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text
from rich.tree import Tree

from consortium.cli.audit import _config
from consortium.cli.audit_report import render_html
from consortium.cli.common import out, run
from consortium.errors import ConfigError

if TYPE_CHECKING:
    from consortium.node.audit_trace import TraceHop, TraceReport


def audit_trace(
    trace_id: Annotated[
        str | None, typer.Argument(help="The trace id (32 hex digits); optional with --task.")
    ] = None,
    org: Annotated[
        list[Path] | None,
        typer.Option("--org", help="An organization's directory (its node.toml); repeatable."),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Find the trace of this task id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")
    ] = None,
) -> None:
    """Rebuild a task's path across organizations and check every hop and log."""
    from consortium.node.audit_records import read_orgs
    from consortium.node.audit_trace import find_traces, trace_report

    def go() -> TraceReport:
        if not org:
            raise ConfigError("give at least one organization directory", key="--org")
        wanted = (trace_id or "").strip().lower()
        if not wanted and not task:
            raise ConfigError("give a TRACE_ID or --task TASK_ID", key="TRACE_ID")
        if wanted and (len(wanted) != 32 or any(c not in "0123456789abcdef" for c in wanted)):
            raise ConfigError("a trace id is 32 hexadecimal digits", key="TRACE_ID")
        if html is not None and not html.parent.is_dir():
            raise ConfigError("no such directory for the report", path=str(html.parent))
        records = read_orgs([_config(d) for d in org])
        if not wanted:
            found = find_traces(records, task or "")
            wanted = found[0] if found else "0" * 32
            report = trace_report(records, wanted, task or "")
            if not found:
                report.findings.clear()
                report.error("task", f"no span or log entry of the given logs names task {task}")
            elif len(found) > 1:
                report.warn(
                    "task", f"task {task} appears in {len(found)} traces; the first is shown"
                )
            return report
        return trace_report(records, wanted, task or "")

    report = run(go)
    data = report_dict(report)
    if html is not None:
        run(lambda: _write(html, render_html(data)))
    if as_json:
        out.print_json(json.dumps(data))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the report: {e.strerror}", path=str(path)) from None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if t else ""


def _hop_dict(h: TraceHop) -> dict[str, Any]:
    return {
        "kind": h.kind,
        "message_id": h.message_id,
        "sender": h.sender,
        "receiver": h.receiver,
        "mode": h.mode,
        "parent": h.parent,
        "start": h.start,
        "end": h.end,
        "time": _iso(h.start),
        "latency_ms": h.latency_ms,
        "model": h.model,
        "tokens": h.tokens,
        "cost": h.cost,
        "answers": h.answers,
        "events": h.events,
        "inclusion": h.inclusion,
        "digest": h.digest,
        "sender_entry": None if h.out is None else h.out.get("seq"),
        "receiver_entry": None if h.into is None else h.into.get("seq"),
        "verdict": h.verdict,
        "checks": h.marks,
    }


def report_dict(report: TraceReport) -> dict[str, Any]:
    """The report as one JSON object: hops, findings, and each organization's log."""
    return {
        "trace_id": report.trace_id,
        "task_id": report.task_id,
        "ok": report.ok,
        "orgs": report.orgs,
        "hops": [_hop_dict(h) for h in report.hops],
        "routes": report.routes,
        "decisions": report.decisions,
        "spans": report.spans,
        "findings": [
            {"severity": f.severity, "where": f.where, "what": f.what} for f in report.findings
        ],
        "logs": {
            org: {
                "origin": log.origin,
                "ok": log.ok,
                "entries": log.entries,
                "checkpoints": log.checkpoints,
                "latest_checkpoint": log.latest_checkpoint,
                "witnessed_size": log.witnessed_size,
                "cosigners": {str(k): v for k, v in sorted(log.cosigners.items())},
                "findings": [
                    {"severity": f.severity, "where": f.where, "what": f.what} for f in log.findings
                ],
            }
            for org, log in report.logs.items()
        },
    }


MARKS = {
    "signature verified": ("✔", "green"),
    "digests agree": ("✔", "green"),
    "one side": ("?", "yellow"),
    "failed": ("✘", "red"),
}


def _label(h: TraceHop) -> Text:
    mark, colour = MARKS.get(h.verdict, ("?", "yellow"))
    text = Text()
    text.append(f"{mark} ", style=colour)
    text.append(f"{h.sender} -> {h.receiver}", style="bold")
    text.append(f"  {h.kind}{f' ({h.mode})' if h.mode else ''}  {h.message_id[:8]}")
    text.append(f"  {_iso(h.start)[11:]}")
    if h.latency_ms is not None:
        text.append(f"  {h.latency_ms:.0f} ms")
    if h.kind == "request" and (h.answers or h.events):
        text.append(f"  {h.answers} answer, {h.events} events")
    if h.model:
        text.append(f"  model {h.model}")
    if h.tokens is not None:
        text.append(f"  {h.tokens} tokens")
    if h.cost is not None:
        text.append(f"  cost {h.cost:g}")
    if h.inclusion:
        text.append(f"  receipt {h.inclusion}")
    text.append(f"  [{h.verdict}]", style=colour)
    return text


def _print(report: TraceReport) -> None:
    root = Tree(
        Text(
            f"trace {report.trace_id}" + (f" (task {report.task_id})" if report.task_id else ""),
            style="bold",
        )
    )
    for r in report.routes:
        line = f"route at {r['org']}: {r.get('route', '')}"
        if r.get("peer"):
            line += f" -> {r['peer']}"
        if r.get("router"):
            line += f" by {r['router']}"
        if r.get("reason"):
            line += f" ({r['reason']})"
        root.add(Text(line, style="cyan"))
    nodes: dict[str, Tree] = {}
    requests = [h for h in report.hops if h.kind == "request"]
    for h in requests:
        parent = nodes.get(h.parent, root)
        nodes[h.message_id] = parent.add(_label(h))
    for h in report.hops:
        if h.kind == "request":
            continue
        if h.kind == "event":
            continue  # counted on their request
        nodes.get(h.parent, root).add(_label(h))
    failed_events = [h for h in report.hops if h.kind == "event" and h.verdict == "failed"]
    for h in failed_events:
        nodes.get(h.parent, root).add(_label(h))
    out.print(root, highlight=False)
    for org, log in report.logs.items():
        state = Text("verified", style="green") if log.ok else Text("FAILED", style="red")
        head = Text(
            f"log of {org}: {log.entries} entries, {log.checkpoints} checkpoints "
            f"({sum(1 for n in log.cosigners.values() if n)} cosigned"
            + (f", witnessed to {log.witnessed_size}" if log.witnessed_size else "")
            + "): "
        )
        out.print(head + state, highlight=False)
        for lf in log.findings:
            out.print(Text(f"  {lf}", style="red" if lf.severity == "error" else "yellow"))
    for tf in report.findings:
        out.print(Text(str(tf), style="red" if tf.severity == "error" else "yellow"))
    verdict = Text("trace verified", style="green") if report.ok else Text("FAILED", style="red")
    out.print(Text(f"{len(report.hops)} hops; ") + verdict, highlight=False)
