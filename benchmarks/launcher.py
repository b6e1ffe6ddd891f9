"""What does the launcher (`consortium up`, consortium/launch/launcher.py) cost? For a
federation of N organizations on the echo model (default N = 3 and 10), in one run:

  - provision: creating what a first `up` creates (federation, admin key, each
    organization's keys, API key and node.toml), timed once per N;
  - launcher: `Launcher.start()` on the provisioned directory — every node started at
    once under one supervisor, ready (its READY line), admitted to the roster and seeing
    every other node as an active peer: what `up` waits for before it prints;
  - baseline: the same nodes started one after another with `start_node` (each waited
    for until READY), without the launcher: no roster, no admission.

Each repeat uses a fresh directory; the arms alternate which goes first. Prints one JSON
object: seconds (medians over the repeats) and launcher / baseline.

    .venv/bin/python benchmarks/launcher.py [--orgs 3,10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from consortium.launch.federation_file import load_federation_file
from consortium.launch.launcher import Launcher
from consortium.launch.local import STOP_GRACE_S, node_environment, start_node
from consortium.launch.supervisor import Supervisor


def federation_file(directory: Path, orgs: int) -> Path:
    text = '[federation]\nname = "Launcher benchmark"\ndirectory = "fed"\n'
    for i in range(orgs):
        text += f'\n[[org]]\nid = "org-{i}"\nbackend = "echo"\n'
    path = directory / "federation.toml"
    path.write_text(text)
    return path


def launcher_arm(path: Path) -> float:
    launcher = Launcher(load_federation_file(path))
    t0 = time.perf_counter()
    try:
        launcher.start()
        return time.perf_counter() - t0
    finally:
        launcher.stop()


def baseline_arm(path: Path) -> float:
    file = load_federation_file(path)
    with Supervisor(file.directory, node_environment(), grace_s=STOP_GRACE_S) as sup:
        t0 = time.perf_counter()
        for org in file.org:
            config = file.directory / org.id / "node.toml"
            start_node(config, config.parent / "baseline.log", supervisor=sup)
        return time.perf_counter() - t0


def measure(orgs: int, repeats: int) -> dict[str, float | int]:
    provision: list[float] = []
    launcher: list[float] = []
    baseline: list[float] = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="consortium-launcher-bench-") as tmp:
            path = federation_file(Path(tmp), orgs)
            t0 = time.perf_counter()
            Launcher(load_federation_file(path)).provision()
            provision.append(time.perf_counter() - t0)
            arms = [("launcher", launcher_arm), ("baseline", baseline_arm)]
            for name, arm in arms if r % 2 == 0 else arms[::-1]:
                (launcher if name == "launcher" else baseline).append(arm(path))
    up, base = statistics.median(launcher), statistics.median(baseline)
    return {
        "orgs": orgs,
        "repeats": repeats,
        "provision_s": round(statistics.median(provision), 3),
        "launcher_up_s": round(up, 3),
        "baseline_sequential_s": round(base, 3),
        "launcher_over_baseline": round(up / base, 3),
        "launcher_up_s_all": [round(x, 3) for x in launcher],
        "baseline_sequential_s_all": [round(x, 3) for x in baseline],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", default="3,10", help="federation sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = {f"orgs_{n}": measure(n, args.repeats) for n in map(int, args.orgs.split(","))}
    result["_setup"] = {
        "model": "echo",
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
