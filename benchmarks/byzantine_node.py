"""A misbehaving organization's node, for the live trust benchmark
(benchmarks/trust_live.py): the real Node with the real model backend of its node.toml,
wrapped so that it answers multiple-choice scoring requests badly.

    python benchmarks/byzantine_node.py --config node.toml --behaviour half_wrong

Behaviours (benchmark scenarios, never part of the consortium package):

- `honest`: the backend unchanged (a control for the wrapper itself);
- `half_wrong`: on about half of the scoring calls, chosen by a hash of the prompt (so the
  same question always gets the same treatment, canaries included), the option scores are
  rotated by one place after length normalisation: the option the model prefers moves to
  the next one, so its answer is wrong whenever the model's was right.

Everything else (signatures, the model it claims, timing, free-text answers) is what an
honest node does. It runs like `consortium node start` (consortium/cli/node.py): prints
`READY grpc=HOST:PORT http=URL` once serving and stops cleanly on SIGTERM or SIGINT, so
`consortium.launch.local.Organization(command=...)` can start it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from consortium.llm.base import (
    ChatMessage,
    Chunk,
    Completion,
    GenerationParams,
    LLMBackend,
    ModelInfo,
)

BEHAVIOURS = ("honest", "half_wrong")
# consortium/cli/node.py: the model thread's wait for the GIL between decode steps.
SWITCH_INTERVAL_S = 0.0005


def sabotaged(prompt: str) -> bool:
    """Whether `half_wrong` answers this prompt wrong: half of all prompts, by hash."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % 2 == 1


def rotated(scores: Sequence[float], tokens: Sequence[int]) -> list[float]:
    """Total log-likelihoods whose per-token means are `scores`' means moved one option
    on (option i gets option i-1's mean), so the length-normalised argmax moves by one."""
    means = [s / max(t, 1) for s, t in zip(scores, tokens, strict=True)]
    n = len(means)
    return [means[(i - 1) % n] * max(tokens[i], 1) for i in range(n)]


class HalfWrongBackend:
    """An `LLMBackend` that scores like `inner` except on the prompts `sabotaged` picks,
    where the options' scores are `rotated`. Generation is untouched."""

    def __init__(self, inner: LLMBackend) -> None:
        self._inner = inner

    @property
    def info(self) -> ModelInfo:
        return self._inner.info

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        cancel: threading.Event,
    ) -> Generator[Chunk, None, Completion]:
        return self._inner.stream_chat(messages, params, cancel)

    def stream_complete(
        self, prompt: str, params: GenerationParams, cancel: threading.Event
    ) -> Generator[Chunk, None, Completion]:
        return self._inner.stream_complete(prompt, params, cancel)

    def score(self, prompt: str, continuations: Sequence[str]) -> list[float]:
        scores = self._inner.score(prompt, continuations)
        if len(continuations) < 2 or not sabotaged(prompt):
            return scores
        # The token counts the node normalises by (consortium/node/option_scoring.py).
        base = self._inner.count_tokens(prompt)
        tokens = [max(self._inner.count_tokens(prompt + c) - base, 1) for c in continuations]
        return rotated(scores, tokens)

    def close(self) -> None:
        self._inner.close()


def wrap(factory: Callable[[], LLMBackend], behaviour: str) -> Callable[[], LLMBackend]:
    if behaviour == "honest":
        return factory
    return lambda: HalfWrongBackend(factory())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="Path to node.toml.")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="half_wrong")
    args = parser.parse_args(argv)

    from consortium import logsafe
    from consortium.errors import ConsortiumError
    from consortium.llm.backends import backend_factory
    from consortium.node.app import Node, serve_until_signalled
    from consortium.node.config import load_config

    try:
        cfg = load_config(args.config)
    except ConsortiumError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logsafe.install(cfg.logging.level)
    # Its own log (node.log), which no peer sees.
    logging.getLogger("byzantine_node").warning("benchmark node: behaviour %s", args.behaviour)
    os.umask(0o077)
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    try:
        node = Node(cfg, wrap(backend_factory(cfg.model, cfg.base_dir), args.behaviour))
        asyncio.run(serve_until_signalled(node))
    except ConsortiumError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
