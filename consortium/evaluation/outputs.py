"""Per-item model outputs on a multiple-choice split, computed once and cached as JSON
lines (one file per split, model and output format version), so routers and protocols are
replayed without running models again. An interrupted run resumes where it stopped.

For each item and model: the log-likelihood and length of every option (the scoring
signal), and a generated answer to the lettered question with the extracted choice and
the generation's token log-probabilities (the generative signal).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from consortium.evaluation.datasets import Item
from consortium.llm.base import ChatMessage, Completion, GenerationParams, LLMBackend
from consortium.llm.registry import cache_dir
from consortium.node.option_scoring import score_options
from consortium.protocols.multiple_choice import (
    OptionScores,
    extract_choice,
    generative_prompt,
    scoring_prompt,
)
from consortium.protocols.routing import top_entropy

FORMAT_VERSION = 1
GENERATION = GenerationParams(max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=5)


@dataclass(frozen=True)
class Generated:
    text: str
    choice: int | None
    mean_logprob: float
    min_logprob: float
    # Entropy (nats) of the first token over its top alternatives, renormalised.
    first_entropy: float
    tokens: int


@dataclass(frozen=True)
class ItemOutput:
    id: str
    model: str
    answer: int
    scores: OptionScores
    generated: Generated
    prompt_tokens: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ItemOutput:
        d = json.loads(text)
        s, g = d["scores"], d["generated"]
        return ItemOutput(
            id=d["id"],
            model=d["model"],
            answer=int(d["answer"]),
            scores=OptionScores(
                logprobs=tuple(s["logprobs"]), tokens=tuple(s["tokens"]), chars=tuple(s["chars"])
            ),
            generated=Generated(**g),
            prompt_tokens=int(d["prompt_tokens"]),
        )


def outputs_path(split: str, model: str, directory: Path | None = None) -> Path:
    base = directory or cache_dir() / "eval"
    return base / f"{split}--{model}--v{FORMAT_VERSION}.jsonl"


def load_outputs(path: Path) -> dict[str, ItemOutput]:
    """What a (possibly interrupted) run wrote; a torn last line is dropped."""
    out: dict[str, ItemOutput] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = ItemOutput.from_json(line)
        except (ValueError, KeyError, TypeError):
            continue
        out[record.id] = record
    return out


def _finish(gen: Generator[Any, None, Completion]) -> Completion:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result: Completion = stop.value
            return result


def generate(backend: LLMBackend, prompt: str, params: GenerationParams) -> Completion:
    """`backend`'s whole completion of `prompt`: as the user's message to a chat model,
    as the text to continue for a completion model."""
    cancel = threading.Event()
    if backend.info.chat:
        return _finish(backend.stream_chat([ChatMessage("user", prompt)], params, cancel))
    return _finish(backend.stream_complete(prompt, params, cancel))


def compute_item(backend: LLMBackend, item: Item) -> ItemOutput:
    q = item.question
    scores = score_options(backend, q)
    completion = generate(backend, generative_prompt(q), GENERATION)
    lps = [t.logprob for t in completion.logprobs]
    generated = Generated(
        text=completion.text,
        choice=extract_choice(completion.text, q),
        mean_logprob=sum(lps) / len(lps) if lps else 0.0,
        min_logprob=min(lps) if lps else 0.0,
        first_entropy=top_entropy(completion.logprobs[0].top) if completion.logprobs else 0.0,
        tokens=len(lps),
    )
    return ItemOutput(
        id=item.id,
        model=backend.info.name,
        answer=item.answer,
        scores=scores,
        generated=generated,
        prompt_tokens=backend.count_tokens(scoring_prompt(q)),
    )


def compute_outputs(
    backend: LLMBackend,
    items: list[Item],
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, ItemOutput]:
    """Outputs for every item, computing only those the cache file lacks."""
    done = load_outputs(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for item in items:
            if item.id not in done:
                record = compute_item(backend, item)
                f.write(record.to_json() + "\n")
                f.flush()
                done[item.id] = record
            if progress is not None:
                progress(1)
    return {item.id: done[item.id] for item in items}
