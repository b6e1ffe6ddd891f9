"""What `consortium bench` runs: gathers a split's cached outputs (computing what is
missing, with the progress display the caller gives: the CLI's is a progress bar), then
evaluates routers or collaboration protocols."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from consortium.evaluation.datasets import Item, load_arc, split_path
from consortium.evaluation.embedding_cache import embeddings_path, question_embeddings
from consortium.evaluation.outputs import ItemOutput, compute_outputs, load_outputs, outputs_path
from consortium.evaluation.routing_eval import SplitData
from consortium.llm.base import LLMBackend
from consortium.llm.registry import resolve_model_file


def load_backend(model: str, context_size: int = 1024) -> LLMBackend:
    from consortium.llm.llama_cpp_backend import LlamaCppBackend

    return LlamaCppBackend(resolve_model_file(model, None), name=model, context_size=context_size)


# start(description, total) -> advance(n): one task's progress.
Start = Callable[[str, int], Callable[[int], None]]
# A progress display for a stretch of work: a context manager yielding its `start`.
Progress = Callable[[], AbstractContextManager[Start]]


@contextmanager
def no_progress() -> Iterator[Start]:
    """The progress display that shows nothing."""
    yield lambda _d, _t: lambda _n: None


def model_outputs(
    split: str,
    model: str,
    items: list[Item],
    start: Start,
    cache: Path | None = None,
) -> dict[str, ItemOutput]:
    path = outputs_path(split, model, cache)
    have = load_outputs(path)
    if all(it.id in have for it in items):
        return {it.id: have[it.id] for it in items}
    backend = load_backend(model)
    try:
        return compute_outputs(
            backend, items, path, progress=start(f"{model} on {split}", len(items))
        )
    finally:
        backend.close()


def split_data(
    split: str,
    local: str,
    strong: str,
    *,
    limit: int | None,
    progress: Progress = no_progress,
    data_dir: Path | None = None,
    cache: Path | None = None,
) -> SplitData:
    items = load_arc(split_path(split, data_dir), limit=limit)
    with progress() as start:
        local_out = model_outputs(split, local, items, start, cache)
        strong_out = model_outputs(split, strong, items, start, cache)
    embeddings = question_embeddings(items, embeddings_path(split, cache))
    return SplitData(split, items, local_out, strong_out, embeddings)
