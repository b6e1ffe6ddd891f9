"""A node loads only what its configuration uses, when it uses it: an echo node with no
redaction imports neither spaCy nor Presidio nor torch nor transformers at start, whatever
its router (they made an echo node 460-620 MB at start; benchmarks/node_memory.py
measures what a node costs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("spacy", "presidio_analyzer", "torch", "transformers")
SCRIPT = f"""
import asyncio, json, sys
from pathlib import Path
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from tests.conftest import make_config

async def main() -> None:
    cfg = make_config(Path(sys.argv[1]), routing={{"router": sys.argv[2]}})
    node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
    await node.start()
    await node.stop()

asyncio.run(main())
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


@pytest.mark.parametrize("router", ["local", "heuristic"])
def test_an_echo_node_imports_no_model_it_does_not_use(tmp_path: Path, router: str) -> None:
    # A process of its own: this one may have imported them for other tests. The
    # heuristic router keeps routing records, which embed multiple-choice questions: the
    # encoder loads with the first of them, not at start.
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), router],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []
