"""The self-contained HTML report of `consortium audit trace --html`: one file, inline CSS
and JavaScript, no network. The report's data is embedded as JSON in a
`<script type="application/json">`; the script draws the timeline from it (a lane per
organization, a bar per hop placed by time), the findings and each log's status, so
what a reader sees is exactly the JSON the command prints with --json. Everything is
written with textContent: nothing in the data is read as markup.
"""

from __future__ import annotations

import json
from typing import Any

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.ok { color: #176f2c; } .bad { color: #b3261e; }
#timeline { position: relative; border: 1px solid #ccc; }
.lane { position: relative; height: 34px; border-bottom: 1px solid #eee; }
.lane-name { position: absolute; left: 4px; top: 8px; width: 110px; font-weight: 600; }
.track { position: absolute; left: 120px; right: 8px; top: 0; bottom: 0; }
.hop { position: absolute; top: 7px; height: 20px; min-width: 4px; border-radius: 3px;
       font-size: 11px; overflow: hidden; white-space: nowrap; color: #fff; }
.hop.request { background: #3a6fd8; } .hop.answer { background: #2e9d57; }
.hop.event { background: #8bbf9f; } .hop.call { background: #8a63c9; }
.hop.failed { outline: 2px solid #b3261e; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee;
  text-align: left; font-size: 12px; }
li.finding.error { color: #b3261e; } li.finding.warning { color: #8a6d00; }
"""

SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('trace-data').textContent);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const status = document.getElementById('status');
  status.textContent = data.ok ? 'every hop and log verifies' : 'findings: see below';
  status.className = data.ok ? 'ok' : 'bad';
  const hops = data.hops || [];
  const times = hops.flatMap(h => [h.start, Math.max(h.end, h.start)]).filter(t => t > 0);
  const t0 = times.length ? Math.min(...times) : 0;
  const t1 = times.length ? Math.max(...times) : 1;
  const span = Math.max(t1 - t0, 1e-3);
  const orgs = [...new Set([...(data.orgs || []), ...hops.map(h => h.sender)])];
  const timeline = document.getElementById('timeline');
  const axis = document.getElementById('axis');
  axis.textContent = 'from ' + (hops.length ? hops[0].time : '-') + ', ' +
    (span * 1000).toFixed(1) + ' ms across';
  const tracks = {};
  for (const org of orgs) {
    const lane = el('div', 'lane');
    lane.dataset.org = org;
    lane.appendChild(el('div', 'lane-name', org));
    const track = el('div', 'track');
    lane.appendChild(track);
    timeline.appendChild(lane);
    tracks[org] = track;
  }
  for (const h of hops) {
    const bar = el('div', 'hop ' + h.kind + (h.verdict === 'failed' ? ' failed' : ''));
    const left = ((h.start - t0) / span) * 100;
    const width = ((Math.max(h.end, h.start) - h.start) / span) * 100;
    bar.style.left = left.toFixed(3) + '%';
    bar.style.width = Math.max(width, 0.4).toFixed(3) + '%';
    bar.dataset.messageId = h.message_id;
    bar.dataset.kind = h.kind;
    bar.dataset.sender = h.sender;
    bar.dataset.receiver = h.receiver;
    bar.dataset.verdict = h.verdict;
    bar.title = h.kind + ' ' + h.sender + ' -> ' + h.receiver + ' ' + h.message_id +
      ' (' + h.verdict + ')';
    bar.textContent = h.kind === 'request' ? '\u2192 ' + h.receiver : '';
    tracks[h.sender].appendChild(bar);
  }
  const table = document.getElementById('hops');
  for (const h of hops) {
    const row = el('tr', 'hop-row');
    row.dataset.messageId = h.message_id;
    for (const v of [h.time, h.sender + ' \u2192 ' + h.receiver, h.kind, h.mode,
                     h.message_id.slice(0, 12), h.latency_ms === null ? '' : h.latency_ms + ' ms',
                     h.model, h.tokens === null ? '' : h.tokens, h.verdict]) {
      row.appendChild(el('td', '', v));
    }
    table.appendChild(row);
  }
  const findings = document.getElementById('findings');
  const all = (data.findings || []).slice();
  for (const [org, log] of Object.entries(data.logs || {})) {
    for (const f of log.findings) {
      all.push({severity: f.severity, where: org + ' log: ' + f.where, what: f.what});
    }
  }
  for (const f of all) {
    const li = el('li', 'finding ' + f.severity, f.severity + ': ' + f.where + ': ' + f.what);
    li.dataset.severity = f.severity;
    findings.appendChild(li);
  }
  if (!all.length) findings.appendChild(el('li', 'none', 'no findings'));
  const logs = document.getElementById('logs');
  for (const [org, log] of Object.entries(data.logs || {})) {
    const li = el('li', 'log ' + (log.ok ? 'ok' : 'bad'),
      org + ': ' + log.entries + ' entries, ' + log.checkpoints + ' checkpoints, ' +
      (log.ok ? 'verified' : 'FAILED'));
    li.dataset.org = org;
    li.dataset.ok = String(log.ok);
    logs.appendChild(li);
  }
  document.body.dataset.rendered = String(hops.length);
})();
"""


def _embedded(data: dict[str, Any]) -> str:
    """JSON that cannot end its <script> element early."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any]) -> str:
    """The report of `data` (the --json object) as one HTML document."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Consortium audit trace</title>
<style>{STYLE}</style></head>
<body>
<h1>Consortium audit trace</h1>
<p>Trace <code id="trace-id"></code>: <span id="status">the report needs JavaScript</span></p>
<h2>Timeline</h2><p id="axis"></p><div id="timeline"></div>
<h2>Hops</h2>
<table><thead><tr><th>time</th><th>hop</th><th>kind</th><th>mode</th><th>message</th>
<th>latency</th><th>model</th><th>tokens</th><th>verdict</th></tr></thead>
<tbody id="hops"></tbody></table>
<h2>Findings</h2><ul id="findings"></ul>
<h2>Logs</h2><ul id="logs"></ul>
<script type="application/json" id="trace-data">{_embedded(data)}</script>
<script>document.getElementById('trace-id').textContent =
  JSON.parse(document.getElementById('trace-data').textContent).trace_id;</script>
<script>{SCRIPT}</script>
</body></html>
"""
