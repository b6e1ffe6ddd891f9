"""The HTML report of `consortium audit trace --html`, opened in a real headless browser
(Debian's chromium, installed by scripts/install-chromium.sh): the DOM the browser
dumps holds what only the report's script draws from the embedded JSON — a lane per
organization, a bar per hop with its message id and verdict, the findings and each
log's status — and the file loads nothing from the network. A missing chromium fails
the test: it is never skipped."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cli.test_audit_trace_cli import ORGS, cli, copies, orgs, request_entry
from tests.node.test_audit_trace import SECRET, Traced, record_tasks

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHROMIUM = "/usr/bin/chromium"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:
    yield await record_tasks(tmp_path_factory.mktemp("trace"))


def dump_dom(report: Path, tmp: Path) -> str:
    browser = shutil.which("chromium") or CHROMIUM
    assert Path(browser).exists(), "chromium is missing: run scripts/install-chromium.sh"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def elements(dom: str, cls: str) -> list[dict[str, str]]:
    """The attributes of every element whose class list starts with `cls`."""
    found = []
    for tag in re.findall(r"<[a-z]+\s[^>]*>", dom):
        m = re.search(r'class="([^"]*)"', tag)
        if m is None or m.group(1).split()[:1] != [cls]:
            continue
        found.append({k: html.unescape(v) for k, v in re.findall(r'([a-z-]+)="([^"]*)"', tag)})
    return found


async def test_the_browser_draws_the_timeline_of_a_verified_trace(
    traced: Traced, tmp_path: Path
) -> None:
    report = tmp_path / "report.html"
    result = cli(traced.escalation, *orgs(traced.dirs), "--html", str(report), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    assert 'data-message-id="' not in text  # no bar before the script runs
    assert SECRET not in text and "Nightingale" not in text  # identifiers only
    dom = dump_dom(report, tmp_path)
    lanes = elements(dom, "lane")
    assert [lane["data-org"] for lane in lanes] == list(ORGS)
    bars = elements(dom, "hop")
    assert len(bars) == len(data["hops"]) > 2
    assert {b["data-message-id"] for b in bars} == {h["message_id"] for h in data["hops"]}
    assert {b["data-verdict"] for b in bars} <= {"signature verified", "digests agree"}
    [request] = [b for b in bars if b["data-kind"] == "request"]
    assert (request["data-sender"], request["data-receiver"]) == ("acme", "globex")
    assert re.search(f'<body[^>]*data-rendered="{len(bars)}"', dom)
    assert "every hop and log verifies" in dom
    logs = elements(dom, "log")
    assert {(x["data-org"], x["data-ok"]) for x in logs} == {(o, "true") for o in ORGS}


async def test_the_browser_lists_the_findings_of_a_tampered_trace(
    traced: Traced, tmp_path: Path
) -> None:
    dirs = copies(traced, tmp_path / "orgs")
    seq = request_entry(dirs, "globex", traced.escalation, "in")
    db = sqlite3.connect(dirs["globex"] / "data" / "audit.sqlite3")
    db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    report = tmp_path / "report.html"
    result = cli(traced.escalation, *orgs(dirs), "--html", str(report))
    assert result.returncode == 1, result.stderr
    dom = dump_dom(report, tmp_path)
    findings = elements(dom, "finding")
    assert findings and all(f["data-severity"] in ("error", "warning") for f in findings)
    assert "globex's log has no entry of it" in dom
    assert any(f["data-severity"] == "error" for f in findings)
    failed = [b for b in elements(dom, "hop") if b["data-verdict"] == "failed"]
    assert [b["data-kind"] for b in failed] == ["request"]
    assert {(x["data-org"], x["data-ok"]) for x in elements(dom, "log")} >= {("globex", "false")}
