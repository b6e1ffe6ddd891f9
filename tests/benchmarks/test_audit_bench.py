"""benchmarks/audit.py still runs and prints its figures, at its smallest settings: every
section is there with sane values (counts, sizes, ratios > 0, the logs verify, the
audit trace of a task joins every hop and span). No assertion on time: the script itself
reports that."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIZES = (600, 1100)


def run_small() -> dict[str, Any]:
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "audit.py"),
            *("--hops", "40", "--round-trips", "3", "--warmup", "1"),
            *("--sizes", ",".join(map(str, SIZES)), "--samples", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result: dict[str, Any] = json.loads(r.stdout)  # one JSON object, nothing else
    return result


def positive(stats: dict[str, Any], unit: str = "us") -> None:
    for q in ("p50", "mean"):
        value = stats[f"{q}_{unit}"]
        assert math.isfinite(value) and value > 0, stats
    assert stats["n"] > 0


def test_audit_benchmark_prints_every_figure() -> None:
    d = run_small()
    assert d["benchmark"] == "audit"

    per = d["per_message"]
    positive(per["baseline_hop_construction"])
    positive(per["sign_request_500_chars"])
    for durability in ("crash", "power"):
        sent = per[f"sent_{durability}"]
        positive(sent)
        assert sent["p99_us"] >= sent["p50_us"]
        assert math.isfinite(sent["ratio_mean_over_sign_request"])
        assert isinstance(sent["meets_1ms_target_mean"], bool)

    rt = d["round_trip"]
    for call, entries in (("ask", 5), ("score", 3)):
        for arm in ("audit_on", "audit_off", "audit_on_receipts"):
            positive(rt[call][arm], "ms")
            assert rt[call][arm]["n"] == 3
        assert rt[call]["ratio_p50_on_over_off"] > 0
        # The audited federation logged the exchange on both sides (at least the request
        # and its answer each way); the other logged nothing.
        assert rt[call]["audit_entries_per_round_trip_both_nodes"] >= entries
    assert rt["ask"]["signed_events_per_answer"] >= 1

    assert set(d["logs"]) == {str(s) for s in SIZES}
    for size in SIZES:
        at = d["logs"][str(size)]
        assert at["entries"] == size
        assert at["build"]["checkpoints"] == size // 256
        for figure in ("checkpoint_sign", "cosign_judge", "receipt", "consistency_proof_build"):
            positive(at[figure])
        v = at["verify_log"]
        assert v["ok"] is True and v["s"] > 0
        assert v["witnessed_size"] == 256 * (size // 256)  # every build checkpoint cosigned
        sizes = at["sizes"]
        depth = math.ceil(math.log2(size + 5))  # the log has grown by `samples` entries
        assert 1 <= sizes["inclusion_proof"]["max_hashes_of_256_random"] <= depth
        assert (
            sizes["inclusion_proof"]["max_bytes_raw"]
            == 32 * (sizes["inclusion_proof"]["max_hashes_of_256_random"])
        )
        for proof in sizes["consistency_proof"].values():
            assert 1 <= proof["hashes"] <= 2 * depth and proof["bytes_raw"] == 32 * proof["hashes"]
        assert 150 < sizes["checkpoint_note_bytes"] < 400
        assert 100 < sizes["cosignature_line_bytes"] < 200
        # The last cosigned checkpoint: its note and two cosignature lines (its size may
        # have one digit fewer than the latest checkpoint's).
        two = sizes["checkpoint_note_bytes"] + 2 * sizes["cosignature_line_bytes"]
        assert abs(sizes["note_with_2_cosignatures_bytes"] - two) <= 1
        assert sizes["receipt_json_bytes"] > sizes["receipt_entry_bytes"] > 100
    assert set(d["trace"]) == {str(s) for s in SIZES}
    for size in SIZES:
        tr = d["trace"][str(size)]
        assert tr["entries_per_org"] == size and tr["entries_both_logs"] == 2 * size
        assert tr["tasks"] >= 2 * (size // 11) - 2  # 11 entries a task, both ways
        # Per task: the asker's server and invoke_agent spans, the answerer's a2a.receive
        # and chat spans; the file exporter's lines hold at most 512 spans each.
        assert tr["spans_both_orgs"] == 4 * tr["tasks"]
        assert tr["traces_jsonl_lines"] >= 2
        read = tr["read_orgs"]
        assert read["logs_ok"] is True and read["problems"] == 0
        assert read["witnessed_sizes"] == {
            "acme": 256 * (size // 256),
            "globex": 256 * (size // 256),
        }
        report = tr["trace_report"]
        assert report["ok"] is True and report["errors"] == 0, report["first_errors"]
        assert report["warnings"] == 0
        assert report["hops"] == report["hops_both_sides"] == 5  # request, 3 events, answer
        assert report["verdicts"] == {"digests agree": 5}  # no task store: no signed copy
        assert report["spans_of_trace"] == {"acme": 2, "globex": 2}
        assert tr["find_traces_by_task"]["found_the_trace_first"] is True
        for figure in ("read_orgs", "trace_report", "find_traces_by_task"):
            assert tr[figure]["median_s"] > 0 and tr[figure]["entries_per_s"] > 0
        assert tr["audit_trace_total_s"] > 0 and tr["build_s"] > 0
    assert set(d["targets"]) >= {"per_message_under_1ms_crash_mean", "round_trip_ask_within_10pct"}
