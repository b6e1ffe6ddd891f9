"""Generation speed of the installed llama-cpp-python build, and which CPU features it uses.

Compares builds: run it in the project's venv (the portable build), then in a venv with a
native build (`CMAKE_ARGS="" pip install --no-cache-dir llama-cpp-python==0.3.36`), on the
same machine. Prints one JSON object.

    .venv/bin/python benchmarks/llama_build.py [--model smollm2-135m] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import time

from llama_cpp import Llama, llama_print_system_info

from consortium.llm.registry import resolve_model_file

PROMPT = "Write a story about a cat:"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    llm = Llama(str(resolve_model_file(args.model, None)), n_ctx=1024, n_threads=2, verbose=False)
    rates = []
    for _ in range(args.runs):
        llm.reset()
        started = time.perf_counter()
        out = llm.create_completion(PROMPT, max_tokens=args.max_tokens, temperature=0.0)
        rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    info = llama_print_system_info()
    print(
        json.dumps(
            {
                "benchmark": "llama_build",
                "model": args.model,
                "system_info": (info.decode() if isinstance(info, bytes) else str(info)).strip(),
                "tokens_per_s_best": round(max(rates), 1),
                "tokens_per_s_all": [round(r, 1) for r in rates],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
