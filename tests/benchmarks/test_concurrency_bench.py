"""The pure parts of benchmarks/concurrency.py (no model, no server): its prompt set, how
clients walk it, the parsing of llama-batched-bench's output (a captured sample), the
percentile, slope, summary and ratio helpers, the process-tree RSS reading. The script's
full run needs the llama-server build (~15 minutes) and is in the README, not here."""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Captured (stdout; it prints nothing else in this mode) from scripts/build-llama-server.sh's
# `llama-batched-bench --model SmolLM2-135M-Instruct.Q4_1.gguf --ctx-size 4096 --no-kv-unified
# -npp 48 -ntg 16 -npl 1,2 --threads 2 --threads-batch 2 --output-format jsonl` on a busy
# machine, between the lines of log a build with other settings prints.
BATCHED_BENCH_SAMPLE = """\
main: n_kv_max = 4096, n_batch = 2048, n_ubatch = 512
{"n_kv_max": 4096, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, \
"is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 48, \
"tg": 16, "pl": 1, "n_kv": 64, "t_pp": 1.275137, "speed_pp": 37.643017, \
"t_tg": 2.857806, "speed_tg": 5.598701, "t": 4.132943, "speed": 15.485332}
{"n_kv_max": 4096, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, \
"is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 48, \
"tg": 16, "pl": 2, "n_kv": 128, "t_pp": 2.516269, "speed_pp": 38.151726, \
"t_tg": 9.471887, "speed_tg": 3.378419, "t": 11.988155, "speed": 10.677206}


llama_perf_context_print:        load time =      40.00 ms
"""


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    # Imported by name from benchmarks/ (on the path for its sibling imports, llama_server
    # and the like): its dataclasses need the module registered in sys.modules.
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "benchmarks"))
        yield importlib.import_module("concurrency")


def test_prompt_set_has_at_least_32_distinct_prompts(bench: ModuleType) -> None:
    prompts = bench.PROMPTS
    assert len(prompts) >= 32
    assert len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p.strip() == p and len(p) > 20 for p in prompts)


@pytest.mark.parametrize("clients", [1, 2, 4, 8, 16])
def test_clients_send_different_prompts_and_cover_the_set(bench: ModuleType, clients: int) -> None:
    rounds = 8
    sent = [[bench.prompt_for(k, j, clients) for k in range(clients)] for j in range(rounds)]
    for batch in sent:  # requests of one round, in flight together, all differ
        assert len(set(batch)) == clients
    for k in range(clients):  # a client never sends the same prompt twice in a row
        own = [sent[j][k] for j in range(rounds)]
        assert all(a != b for a, b in itertools.pairwise(own))
    if clients * rounds >= len(bench.PROMPTS):
        assert {p for batch in sent for p in batch} == set(bench.PROMPTS)


def test_batched_bench_rows_are_parsed_by_sequence_count(bench: ModuleType) -> None:
    rows = bench.parse_batched_bench(BATCHED_BENCH_SAMPLE)
    assert sorted(rows) == [1, 2]
    one, two = rows[1], rows[2]
    assert one["decode_tokens_per_s"] == 5.6  # speed_tg
    assert one["completion_tokens"] == 16
    assert one["tokens_per_s"] == round(16 / 4.132943, 2)  # prompt time included
    assert one["prompt_tokens"] == 48
    assert two["completion_tokens"] == 2 * 16
    assert two["tokens_per_s"] == round(32 / 11.988155, 2)
    assert two["decode_tokens_per_s"] == 3.38
    assert two["prefill_s"] == 2.516


@pytest.mark.parametrize(
    "output",
    [
        "",
        "|    PP |     TG |    B |\n|   128 |    128 |    1 |",  # the markdown table
        '{"pl": 1, "pp": 48',  # cut off
        '{"pl": 1, "pp": 48, "tg": 128}',  # not a result row
        "[1, 2, 3]",
        '{"error": "unable to load model"}',
    ],
)
def test_batched_bench_output_without_rows_gives_none(bench: ModuleType, output: str) -> None:
    assert bench.parse_batched_bench(output) == {}


def test_percentile(bench: ModuleType) -> None:
    values = [float(x) for x in (7, 3, 9, 1, 5, 10, 2, 8, 4, 6)]
    assert bench.percentile(values, 0.5) == 6.0
    assert bench.percentile(values, 0.95) == 10.0
    assert bench.percentile(values, 0.0) == 1.0
    assert bench.percentile([4.2], 0.95) == 4.2
    assert values[0] == 7  # the input is left as it was


def test_slope_per_minute(bench: ModuleType) -> None:
    flat = [(t * 5.0, 300.0) for t in range(10)]
    assert bench.slope_per_minute(flat) == 0.0
    growing = [(t * 10.0, 300.0 + t) for t in range(10)]  # 1 MB every 10 s
    assert bench.slope_per_minute(growing) == pytest.approx(6.0)
    assert bench.slope_per_minute([(0.0, 300.0)]) == 0.0
    assert bench.slope_per_minute([(1.0, 300.0), (1.0, 310.0)]) == 0.0


def test_summary_counts_errors_and_times_only_answers(bench: ModuleType) -> None:
    outcome = bench.Outcome
    outcomes = [
        outcome("ok", 2.0, 0.1, 128, 40),
        outcome("ok", 4.0, 0.3, 64, 41),
        outcome("429", 0.01, retry_after="1"),
        outcome("timeout", 600.0),
    ]
    s = bench.summarize(outcomes, 8.0, 312.34)
    assert s["requests"] == 4 and s["ok"] == 2
    assert s["errors"] == {"429": 1, "timeout": 1}
    assert s["completion_tokens"] == 192
    assert s["tokens_per_s"] == 24.0
    assert s["latency_p95_s"] == 4.0 and s["ttft_p50_ms"] == 300.0
    assert s["peak_rss_mb"] == 312.3
    nothing = bench.summarize([outcome("connection", 0.1)], 0.1, 0.0)
    assert nothing["ok"] == 0 and nothing["ttft_p50_ms"] is None
    assert nothing["latency_p50_s"] is None and nothing["tokens_per_s"] == 0.0


def test_ratios_and_targets(bench: ModuleType) -> None:
    def arm(tps: float, p50: float) -> dict[str, float]:
        return {"tokens_per_s": tps, "latency_p50_s": p50}

    result = {
        bench.ARMS["a"]: {"1": arm(96.0, 1.0), "8": arm(100.0, 3.0)},
        bench.ARMS["b"]: {"1": arm(100.0, 1.0), "8": arm(200.0, 2.0)},
        bench.ARMS["c"]: {"1": arm(90.0, 1.1), "8": arm(50.0, 8.0)},
        bench.ARMS["ceiling"]: {"args": [], "1": arm(120.0, 0.0), "8": arm(400.0, 0.0)},
    }
    r = bench.ratios(result, [1, 8])
    assert r["ratio_tokens_per_s_a_over_b"] == {"1": 0.96, "8": 0.5}
    assert r["ratio_latency_p50_a_over_b"] == {"1": 1.0, "8": 1.5}
    assert r["ratio_tokens_per_s_a_over_c"] == {"1": 1.067, "8": 2.0}
    assert r["ratio_tokens_per_s_b_over_ceiling"] == {"1": 0.833, "8": 0.5}
    assert r["targets_met"] == {
        "tokens_per_s_a_over_b_at_1": True,
        "tokens_per_s_a_over_b_at_8": False,
        "latency_p50_a_over_b_at_8": False,
    }
    only_a = bench.ratios({bench.ARMS["a"]: result[bench.ARMS["a"]]}, [1, 8])
    assert set(only_a) == {"targets"}


@pytest.mark.parametrize("text", ["", "0,1", "a,b", "-2", ","])
def test_client_list_rejects_bad_input(bench: ModuleType, text: str) -> None:
    with pytest.raises(ValueError):
        bench.parse_list(text)


def test_client_list_is_sorted_and_deduplicated(bench: ModuleType) -> None:
    assert bench.parse_list("16,1,8,8") == [1, 8, 16]


def test_tree_rss_counts_this_process_and_nothing_for_a_gone_one(bench: ModuleType) -> None:
    assert bench.tree_rss_mb(os.getpid()) > 10
    assert bench.tree_rss_mb(2**22 + 1) == 0.0  # above the kernel's pid_max limit
