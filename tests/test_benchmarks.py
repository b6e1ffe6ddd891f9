"""The benchmark scripts still run and print their figures (smallest settings; no
assertion on time: that is what the scripts themselves report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_llama_build_benchmark_runs() -> None:
    d = run("llama_build.py", "--runs", "1", "--max-tokens", "16")
    assert "AVX2 = 1" in str(d["system_info"])
