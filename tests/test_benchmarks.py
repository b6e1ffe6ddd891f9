"""The benchmark scripts still run and print their figures (smallest settings; no
assertion on time: that is what the scripts themselves report). The live trust benchmark
runs on echo nodes here (its real-model run is in the README); its Byzantine node's
score rotation is checked directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from tests.helpers import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result: dict[str, object] = json.loads(r.stdout)
    return result


def test_messaging_benchmark_runs() -> None:
    d = run("messaging.py", "--requests", "128", "--rounds", "2")
    for key in ("a_raw_grpc_echo", "b_a2a_unsigned", "c_a2a_signed_verified"):
        assert set(d[key]) == {"sequential", "concurrent_32"}  # type: ignore[arg-type]
    assert float(d["ratio_c_over_a_p50"]) > 0  # type: ignore[arg-type]
    assert float(d["ratio_get_call_proof_over_anonymous_p50"]) > 0  # type: ignore[arg-type]
    assert set(d["get_task_authorization_p50_ms"]) == {  # type: ignore[arg-type]
        "get_anonymous",
        "get_api_key",
        "get_call_proof",
    }


def test_node_overhead_benchmark_runs() -> None:
    d = run("node_overhead.py", "--rounds", "1")
    a, b = d["a_direct_llama_cpp"], d["b_node_a2a_grpc"]
    assert a["output_tokens"] == b["output_tokens"]  # type: ignore[index]  # same generations
    assert float(d["ratio_tokens_per_s_b_over_a"]) > 0  # type: ignore[arg-type]


def test_keepalive_benchmark_runs() -> None:
    d = run("keepalive.py", "--requests", "5", "--rounds", "1")
    arms = ("a_a2a_grpc", "b_a2a_jsonrpc_http", "c_openai_chat_http", "d_healthz_keepalive")
    for arm in (*arms, "e_healthz_new_connection"):
        summary = cast(dict[str, float], d[arm])
        assert summary["requests"] == 5 and summary["requests_per_s"] > 0
    assert float(d["ratio_requests_per_s_a_over_b"]) > 0  # type: ignore[arg-type]
    assert float(d["ratio_requests_per_s_a_over_c"]) > 0  # type: ignore[arg-type]


# The arms of benchmarks/openai_api.py this test runs: all four (direct, the node's
# OpenAI endpoint, llama_cpp.server, a node on the remote backend).
OPENAI_API_ARMS = ("a", "b", "c", "d")


def test_openai_api_benchmark_runs() -> None:
    names = {
        "a": "a_direct_llama_cpp",
        "b": "b_node_openai",
        "c": "c_llama_cpp_server",
        "d": "d_node_remote_backend",
    }
    arms = set(OPENAI_API_ARMS)
    d = run("openai_api.py", "--rounds", "1", "--max-tokens", "8", "--arms", ",".join(sorted(arms)))
    assert d["arms"] == sorted(arms)
    assert not {key for a, key in names.items() if a not in arms} & set(d)
    for arm in sorted(arms):
        summary = cast(dict[str, float], d[names[arm]])
        assert summary["requests"] == 3
        assert 0 < summary["output_tokens"] <= 3 * 8
        assert summary["ttft_p50_ms"] > 0
    ratios: list[str] = []
    if {"a", "b"} <= arms:
        assert d["same_text_a_b"] is True  # one greedy decode, in process or in the node
        ratios += ["ratio_tokens_per_s_b_over_a", "ratio_decode_tokens_per_s_b_over_a"]
        assert "ttft_overhead_b_minus_a_p50_ms" in d
    if {"b", "c"} <= arms:
        ratios.append("ratio_tokens_per_s_b_over_c")
    if {"a", "c"} <= arms:
        ratios.append("ratio_tokens_per_s_c_over_a")
    if {"c", "d"} <= arms:
        ratios += ["ratio_latency_p50_d_over_c", "ratio_tokens_per_s_d_over_c"]
        assert "ttft_overhead_d_minus_c_p50_ms" in d
    for ratio in ratios:
        assert float(d[ratio]) > 0  # type: ignore[arg-type]


def test_concurrency_benchmark_runs_on_nodes() -> None:
    """The node arms of benchmarks/concurrency.py (its llama-server arm and ceiling need
    a ~15-minute build; its pure parts are tested in tests/benchmarks)."""
    d = run(
        "concurrency.py",
        *("--arms", "a,c", "--clients", "2", "--requests", "1", "--max-tokens", "4"),
    )
    assert d["arms"] == ["a", "c"] and d["clients"] == [2]
    assert "b_llama_server_parallel_n" not in d and "ceiling_llama_batched_bench" not in d
    for arm, parallel in (("a_node_parallel_n", 2), ("c_node_parallel_1", 1)):
        s = cast(dict[str, Any], d[arm])["2"]
        assert s["server"]["parallel"] == parallel
        assert s["requests"] == 2 and s["ok"] + sum(s["errors"].values()) == 2
        assert s["peak_rss_mb"] > 50
        if s["ok"]:
            assert 0 < s["completion_tokens"] <= 4 * s["ok"] and s["tokens_per_s"] > 0
    assert "2" in cast(dict[str, float], d["ratio_tokens_per_s_a_over_c"])


def test_grammar_benchmark_runs() -> None:
    d = run("grammar.py", "--rounds", "1", "--max-tokens", "12")
    rates = cast(dict[str, float], d["decode_tokens_per_s_p50"])
    assert set(rates) == {"plain_greedy", "json_greedy", "plain_sampled", "json_sampled"}
    assert all(r > 0 for r in rates.values())
    assert float(d["ratio_json_over_plain_greedy"]) > 0  # type: ignore[arg-type]
    assert d["every_finished_json_answer_parsed"] is True


def test_option_scoring_benchmark_runs() -> None:
    d = run("option_scoring.py", "--questions", "2")
    assert d["questions"] == 2 and int(d["options"]) >= 6  # type: ignore[call-overload]
    assert d["same_option_chosen"] is True
    assert float(d["max_abs_logprob_difference"]) < 0.05  # type: ignore[arg-type]


def test_llama_build_benchmark_runs() -> None:
    d = run("llama_build.py", "--runs", "1", "--max-tokens", "16")
    assert "AVX2 = 1" in str(d["system_info"])


def test_byzantine_rotation_moves_the_normalised_choice() -> None:
    byz = benchmark_module("byzantine_node")
    scores, tokens = [-6.0, -2.0, -9.0, -4.0], [3, 1, 3, 2]  # per token: -2, -2, -3, -2
    scores[1] = -1.0  # option 1 leads
    moved = byz.rotated(scores, tokens)
    means = [s / t for s, t in zip(moved, tokens, strict=True)]
    assert max(range(4), key=lambda i: means[i]) == 2
    picked = [byz.sabotaged(f"Question: {i}\nAnswer:") for i in range(200)]
    assert 70 < sum(picked) < 130  # about half, and always the same for one prompt
    assert picked == [byz.sabotaged(f"Question: {i}\nAnswer:") for i in range(200)]


def test_live_trust_benchmark_runs_on_echo_nodes(tmp_path: Path) -> None:
    """The live run's machinery with echo models: four node processes, umbrella started
    by benchmarks/byzantine_node.py through Organization.command, three tasks."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "arc_easy_dev_sample.jsonl", data / "arc_easy_dev.jsonl")
    shutil.copy(
        ROOT / "tests" / "data" / "arc_easy_test_sample.jsonl", data / "arc_easy_test.jsonl"
    )
    work = tmp_path / "work"
    d = run(
        "trust_live.py",
        *("--backend", "echo", "--tasks", "3", "--arms", "half_wrong", "--json", "--records"),
        *("--data", str(data), "--workdir", str(work), "--quiet"),
    )
    arm = d["arms"]["half_wrong-trust"]  # type: ignore[index]
    assert arm["tasks"] == 3 and arm["failed_tasks"] == 0
    assert arm["tasks_sent_to_umbrella"] == 3
    assert set(arm["final_standings"]) == {"globex", "initech", "umbrella"}
    assert all(r["members"].keys() == {"globex", "initech", "umbrella"} for r in arm["records"])
    assert all(r["verdicts"]["umbrella"]["signature"] == "verified" for r in arm["records"])
    assert arm["task_tokens"] > 0 and d["false_quarantines"] == 0
    log = (work / "half_wrong-trust" / "umbrella" / "node.log").read_text()
    assert "benchmark node: behaviour half_wrong" in log  # byzantine_node.py ran it
    config = (work / "half_wrong-trust" / "umbrella" / "node.toml").read_text()
    assert 'backend = "echo"' in config


def test_overload_benchmark_runs() -> None:
    d = run("overload.py", "--seconds", "1", "--token-delay", "0.005")
    for key in ("a_shedding_off", "b_shedding_on"):
        figures = cast(dict[str, object], d[key])
        assert figures["connection_errors"] == 0
        assert 0 <= cast(float, figures["refusal_rate"]) <= 1
    assert cast(dict[str, object], d["a_shedding_off"])["refusal_rate"] == 0


def test_failover_benchmark_runs() -> None:
    d = run("failover.py", "--cycles", "1", "--storm", "1", "--baseline", "3")
    failover = cast(dict[str, float], d["failover"])
    reuse = cast(dict[str, float], d["reuse_after_restart"])
    assert failover["n"] == reuse["n"] == 1
    assert failover["p50_s"] > 0 and reuse["p50_s"] > 0
    storm = cast(dict[str, object], d["storm"])
    assert float(cast(float, storm["reuse_after_last_restart_s"])) > 0
    blackhole = cast(dict[str, object], d["blackhole"])
    assert cast(dict[str, float], blackhole["next_tasks"])["n"] == 3
    assert float(cast(float, d["ratio_failover_p50_over_baseline_p50"])) > 0


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root"
)
def test_wan_benchmark_runs() -> None:
    d = run("wan.py", "--tasks", "1", "--peer-timeout", "5")
    grid = cast(dict[str, dict[str, float]], d["grid"])
    assert len(grid) == 9 and all(row["completed"] == 1.0 for row in grid.values())
    partition = cast(dict[str, float], d["partition"])
    assert partition["detect_s"] > 0 and partition["recover_s"] > 0


def test_transformers_batching_benchmark_runs() -> None:
    d = run("transformers_batching.py", "--rounds", "1", "--new-tokens", "3")
    ways = {"sequential", "generate_1", "batch_2", "batch_4", "batch_8"}
    ways |= {"backend_parallel_4", "backend_parallel_8"}
    assert set(cast(dict[str, float], d["ratio_to_sequential"])) == ways
    assert cast(dict[str, float], d["ratio_to_sequential"])["sequential"] == 1.0
    assert all(n > 0 for n in cast(dict[str, int], d["tokens"]).values())


def test_launcher_benchmark_runs() -> None:
    d = run("launcher.py", "--orgs", "2", "--repeats", "1")
    two = cast(dict[str, float], d["orgs_2"])
    assert two["orgs"] == 2 and two["launcher_up_s"] > 0 and two["baseline_sequential_s"] > 0
    assert two["launcher_over_baseline"] > 0


def test_replicas_benchmark_runs() -> None:
    d = run("replicas.py", "--seconds", "1", "--clients", "2", "--streams", "6")
    arms = cast(dict[str, dict[str, float]], cast(dict[str, Any], d["clients"])["2"])
    assert set(arms) == {"a_sqlite", "b_postgresql", "c_2_replicas", "d_3_replicas"}
    for row in arms.values():
        assert row["requests_per_s"] > 0 and row["errors"] == 0, arms
    # A replica SIGKILLed under streamed tasks: each of its tasks terminal, none stuck,
    # every client whose stream broke served again by a survivor.
    failover = cast(dict[str, Any], d["failover"])
    assert failover["on_killed_replica"] >= 1 and failover["tasks_stuck"] == 0, failover
    assert failover["killed_tasks_terminal_after_s"] is not None, failover
    assert failover["broken_clients_not_served"] == 0, failover


def test_trust_offload_benchmark_runs() -> None:
    d = run("trust_offload.py", "--messages", "50")
    for storage in ("sqlite", "postgresql"):
        arms = cast(dict[str, Any], d[storage])
        assert {"inline", "thread"} <= set(arms)
        assert float(arms["thread_over_inline_p50"]) > 0
