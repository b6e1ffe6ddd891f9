"""What a node costs in memory: the resident set (VmRSS) of `consortium node start`
(its own process) once it prints READY, for the echo model and SmolLM2, with the local
router (no sentence encoder) and with the heuristic router, whose routing records embed
each question with the MiniLM encoder (loaded at start where configured, nowhere else).

    .venv/bin/python benchmarks/node_memory.py

Prints one JSON object: MB per configuration, and the ratio of each to the echo node's
with the local router (the baseline, measured in the same run).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from consortium.launch.local import start_node
from consortium.node.setup import init_node

CONFIGS = {
    "echo, local router": ("smollm2-135m", "echo", "local"),
    "echo, heuristic router (encoder)": ("smollm2-135m", "echo", "heuristic"),
    "smollm2-135m, local router": ("smollm2-135m", "llama_cpp", "local"),
    "smollm2-135m, heuristic router (encoder)": ("smollm2-135m", "llama_cpp", "heuristic"),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(model: str, backend: str, router: str) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="consortium-mem-"))
    init_node("mem", workdir, model=model, grpc_port=0, http_port=0)
    config = workdir / "node.toml"
    text = config.read_text().replace('backend = "llama_cpp"', f'backend = "{backend}"')
    config.write_text(text + f'\n[routing]\nrouter = "{router}"\n')
    child, _ = start_node(config, workdir / "node.log")
    try:
        return rss_mb(child.process.pid)
    finally:
        child.stop()


def main() -> None:
    figures = {name: round(measure(*setup), 1) for name, setup in CONFIGS.items()}
    base = figures["echo, local router"]
    print(
        json.dumps(
            {
                "rss_mb": figures,
                "ratio_to_echo_local": {k: round(v / base, 2) for k, v in figures.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
