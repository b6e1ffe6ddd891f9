"""What a node costs in memory: the resident set (VmRSS) of `consortium node start`
(its own process) once it prints READY, for the echo model and SmolLM2 with the local
router and with the heuristic router, and again after one multiple-choice task: the
heuristic router keeps routing records, which embed the question with the MiniLM sentence
encoder, loaded with the first question (a learned router loads it at start).

    .venv/bin/python benchmarks/node_memory.py

Prints one JSON object: MB per configuration, and each one's ratio to the echo node with
the local router at start (the baseline, measured in the same run).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from consortium.launch.local import start_node
from consortium.node.client import ask, fetch_agent_card, open_client
from consortium.node.setup import init_node

CONFIGS = {
    "echo, local router": ("echo", "local"),
    "echo, heuristic router": ("echo", "heuristic"),
    "smollm2-135m, local router": ("llama_cpp", "local"),
    "smollm2-135m, heuristic router": ("llama_cpp", "heuristic"),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


async def one_choice_task(http_url: str) -> None:
    client = open_client(await fetch_agent_card(http_url))
    try:
        answer = await ask(client, "Which is a fruit?", options={"choices": ["apple", "rock"]})
        assert answer.state == "completed", answer.status_text
    finally:
        await client.close()


def measure(backend: str, router: str) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="consortium-mem-"))
    init_node("mem", workdir, model="smollm2-135m", grpc_port=0, http_port=0)
    config = workdir / "node.toml"
    text = config.read_text().replace('backend = "llama_cpp"', f'backend = "{backend}"')
    config.write_text(text + f'\n[routing]\nrouter = "{router}"\n')
    child, http_url = start_node(config, workdir / "node.log")
    try:
        at_start = rss_mb(child.process.pid)
        asyncio.run(one_choice_task(http_url))
        return {"at_start": at_start, "after_a_choice_task": rss_mb(child.process.pid)}
    finally:
        child.stop()


def main() -> None:
    figures = {name: measure(*setup) for name, setup in CONFIGS.items()}
    base = figures["echo, local router"]["at_start"]
    ratios = {
        name: {when: round(mb / base, 2) for when, mb in by_time.items()}
        for name, by_time in figures.items()
    }
    print(json.dumps({"rss_mb": figures, "ratio_to_echo_local_at_start": ratios}, indent=2))


if __name__ == "__main__":
    main()
