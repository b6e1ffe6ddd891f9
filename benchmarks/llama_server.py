"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) on a
local GGUF file, in its own process: what the OpenAI endpoint's benchmark compares the
node with, and the real server the remote backend's tests talk to.

    with llama_server(resolve_model_file("smollm2-135m", None)) as base_url:
        ...  # base_url: "http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from consortium.launch.supervisor import Child, NotReady, Supervisor

START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def llama_server(
    model: Path,
    *,
    n_ctx: int = 2048,
    n_threads: int = 2,
    api_key: str | None = None,
    logits_all: bool = False,
    model_alias: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Runs the server until the block ends; yields its base URL (`.../v1`).
    `logits_all`: keep every position's logits, which llama-cpp-python needs for any
    log-probabilities (generated tokens' as well as the prompt's, `echo` with `logprobs`);
    without it the server refuses requests that ask for them."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--verbose",
        "False",
    ]
    if model_alias:
        cmd += ["--model_alias", model_alias]
    if api_key:
        cmd += ["--api_key", api_key]
    # Always explicit: the server's own default is True, whatever this function's is.
    cmd += ["--logits_all", str(logits_all)]
    cmd += list(extra_args)
    base_url = f"http://127.0.0.1:{port}/v1"
    with serving("llama_cpp.server", cmd, base_url, api_key):
        yield base_url


@contextlib.contextmanager
def serving(
    name: str, cmd: list[str], base_url: str, api_key: str | None = None
) -> Iterator[Child]:
    """Runs `cmd`, an OpenAI-compatible server at `base_url` (`.../v1`), in its own
    session until the block ends; ready once GET /models answers 200. Yields the child
    (its process id is the server's)."""
    with (
        tempfile.TemporaryDirectory(prefix="llama-server-") as logs,
        Supervisor(Path(logs), {**os.environ, "PYTHONUNBUFFERED": "1"}, new_session=True) as sup,
    ):
        try:
            child = sup.start(name, cmd, ready=_ready(base_url, api_key), timeout=START_TIMEOUT_S)
        except NotReady as e:
            tail = e.child.log()[-2000:]
            raise RuntimeError(f"{name} did not start ({e}): {tail}") from None
        yield child


def _ready(base_url: str, api_key: str | None) -> Callable[[], bool]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def check() -> bool:
        try:
            return httpx.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check
