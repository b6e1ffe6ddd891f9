"""`consortium bench routing | collaborate | federated | trust | redaction`: routers,
collaboration protocols, the federated routing policy, the trust layer (simulated) and
redaction (detection, the default policy's leaks and round trip, answer quality) evaluated
on benchmark data. Wiring only; the pieces live
in consortium/evaluation (the federated runs' options are generated from
consortium/learning/settings.py: cli/options.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from consortium.cli.common import print_bench, progress_bars, run, stop_on_sigterm
from consortium.cli.options import setting_options
from consortium.learning.settings import TrainOptions


def bench_routing(
    limit: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N items of each split.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the PNG plot (default: bench-routing.png).")
    ] = None,
    local: Annotated[str, typer.Option(help="The origin's (weak) model.")] = "smollm2-135m",
    strong: Annotated[str, typer.Option(help="The peer's (strong) model.")] = "gemma3-270m",
    tune_split: Annotated[str, typer.Option(help="Split to tune on.")] = "arc_easy_dev",
    eval_split: Annotated[str, typer.Option(help="Split to report on.")] = "arc_easy_test",
    rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Escalation rate of the operating point.")
    ] = 0.5,
    bootstrap: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 1000,
    policy_out: Annotated[
        Path | None,
        typer.Option(help="Also write the learned router's policy (unsigned) to this file."),
    ] = None,
) -> None:
    """Replay every router over cached model outputs: cost-quality curves, AUC, APGR,
    CPT(50 %), CPT(80 %) with bootstrap 95 % intervals, against random and the oracle."""
    from consortium.evaluation.harness import split_data
    from consortium.evaluation.plots import plot_routing
    from consortium.evaluation.routing_eval import evaluate_routers

    def go() -> dict[str, Any]:
        progress = progress_bars()
        dev = split_data(tune_split, local, strong, limit=limit, progress=progress)
        test = split_data(eval_split, local, strong, limit=limit, progress=progress)
        return evaluate_routers(
            dev, test, rate=rate, bootstrap_samples=bootstrap, policy_out=policy_out
        )

    result = run(go)
    png = plot_routing(result, plot or Path("bench-routing.png"))
    result["_setup"]["plot"] = str(png)
    print_bench(
        result,
        as_json,
        [
            "accuracy",
            "auc",
            "apgr",
            "apgr_ci95",
            "cpt50",
            "cpt50_ci95",
            "cpt80",
            "escalation_rate",
            "tokens",
        ],
    )


def bench_collaborate(
    limit: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N items of each split.")
    ] = None,
    live: Annotated[
        int,
        typer.Option(min=0, help="Also run debate, mixture and self-consistency live on N items."),
    ] = 0,
    rounds: Annotated[int, typer.Option(min=1, max=5, help="Debate rounds.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    local: Annotated[str, typer.Option(help="The origin's model.")] = "smollm2-135m",
    strong: Annotated[str, typer.Option(help="The peer's model.")] = "gemma3-270m",
    tune_split: Annotated[str, typer.Option(help="Split to tune on.")] = "arc_easy_dev",
    eval_split: Annotated[str, typer.Option(help="Split to report on.")] = "arc_easy_test",
    plot: Annotated[
        Path | None,
        typer.Option(help="Where to write the PNG plot (default: bench-collaborate.png)."),
    ] = None,
) -> None:
    """Vote, debate (full, ring, star) and mixture against the best single model and its
    self-consistency at the same token budget."""
    from consortium.evaluation.collab_eval import evaluate_collaboration
    from consortium.evaluation.harness import load_backend, split_data
    from consortium.evaluation.plots import plot_collaboration

    def go() -> dict[str, Any]:
        progress = progress_bars()
        dev = split_data(tune_split, local, strong, limit=limit, progress=progress)
        test = split_data(eval_split, local, strong, limit=limit, progress=progress)
        with progress() as start:
            return evaluate_collaboration(
                dev, test, live_limit=live, load=load_backend, rounds=rounds, progress=start
            )

    result = run(go)
    png = plot_collaboration(result, plot or Path("bench-collaborate.png"))
    result["_setup"]["plot"] = str(png)
    print_bench(result, as_json, ["accuracy", "gain_over_best_single", "gain_ci95", "tokens"])


# The benchmark's setup (README, "Federated routing policy"): its own defaults for these.
FEDERATED_DEFAULTS = {"rounds": 30, "label": "escalation_helps"}


@setting_options(
    TrainOptions,
    only=("rounds", "label", "local_steps", "learning_rate", "l2", "proximal_mu", "held_out"),
    defaults=FEDERATED_DEFAULTS,
)
def bench_federated(
    *,
    orgs: Annotated[int, typer.Option(min=2, max=10, help="Organizations.")] = 4,
    # Options of the runs (--rounds, --label, ...) from TrainOptions: cli/options.py. Both
    # strategies run; neither differential privacy.
    options: TrainOptions,
    deployment: Annotated[
        bool,
        typer.Option(
            "--deployment", help="Also run FedAvg on a loopback SuperLink with SuperNodes."
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(min=10, help="Only the first N items.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Where to write the PNG plot (default: bench-federated.png)."),
    ] = None,
) -> None:
    """The federated routing policy (Flower: FedAvg, FedProx) against one trained
    centrally on the pooled records, each organization's own, and random: held-out
    classifier AUC and APGR, and time per round of each engine."""
    from consortium.evaluation.federated_eval import evaluate_federated
    from consortium.evaluation.harness import split_data
    from consortium.evaluation.plots import plot_federated
    from consortium.launch.flower import FlowerEngines

    def go() -> dict[str, Any]:
        stop_on_sigterm()
        progress = progress_bars()
        dev = split_data("arc_easy_dev", "smollm2-135m", "gemma3-270m", limit=limit,
                         progress=progress)  # fmt: skip
        test = split_data("arc_easy_test", "smollm2-135m", "gemma3-270m", limit=limit,
                          progress=progress)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="consortium-fedbench-") as tmp:
            return evaluate_federated(
                dev,
                test,
                orgs=orgs,
                options=options,
                work_dir=Path(tmp),
                engines=FlowerEngines(),
                deployment=deployment,
            )

    result = run(go)
    png = plot_federated(result, plot or Path("bench-federated.png"))
    result["_setup"]["plot"] = str(png)
    result.pop("_curves")
    print_bench(result, as_json, ["classifier_auc", "apgr", "cpt50", "seconds_per_round", "engine"])


def bench_trust(
    tasks: Annotated[int, typer.Option(min=50, help="Tasks per run.")] = 5000,
    seeds: Annotated[int, typer.Option(min=1, help="Runs (seeds) per behaviour.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    canary_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help=r"Override the canary rate (default: node.toml's \[trust] value).",
        ),
    ] = None,
    weight_protocol: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help=r"Override the protocol evidence weight (default: node.toml's \[trust] value).",
        ),
    ] = None,
) -> None:
    """Simulated federations with one Byzantine member (random, always wrong, half wrong,
    model substitution, turncoat, selective) replayed over cached ARC outputs: tasks to
    quarantine, false quarantines, vote accuracy with and without the trust layer, and
    the canaries' token overhead, against the issue's targets."""
    import dataclasses
    import json

    from consortium.cli.common import out, write_through
    from consortium.evaluation.trust_eval import cached_replay, evaluate_trust
    from consortium.trust.canary_schedule import CanarySettings
    from consortium.trust.reputation_engine import ReputationSettings

    settings = ReputationSettings()
    if weight_protocol is not None:
        settings = dataclasses.replace(settings, weight_protocol=weight_protocol)
    canary = CanarySettings() if canary_rate is None else CanarySettings(rate=canary_rate)

    def go() -> dict[str, Any]:
        data = cached_replay()
        return evaluate_trust(data, tasks=tasks, seeds=seeds, settings=settings, canary=canary)

    result = run(go)
    if as_json:
        write_through(json.dumps(result, separators=(",", ":")) + "\n")
        return
    rows = {k: v for k, v in result.items() if not k.startswith("_")}
    columns = [
        "quarantined_share",
        "tasks_to_quarantine_median",
        "tasks_to_quarantine_p95",
        "vote_accuracy_with_trust",
        "vote_accuracy_without_trust",
        "vote_accuracy_all_honest",
    ]
    print_bench({**rows, "_setup": {"tasks": tasks, "seeds": seeds}}, False, columns)
    out.print(result["_summary"])
    out.print(result["_targets"])


def bench_redaction(
    limit: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N texts of the set.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    latency_messages: Annotated[
        int, typer.Option(min=5, help="~200-word messages timed per detector.")
    ] = 100,
    quality_items: Annotated[
        int, typer.Option(min=1, help="Extraction questions for the answer-quality cost.")
    ] = 105,
    no_quality: Annotated[
        bool, typer.Option("--no-quality", help="Skip the answer-quality part (no model).")
    ] = False,
    splits: Annotated[
        int, typer.Option(min=1, help="Random chunkings of each echoed text (round trip).")
    ] = 5,
) -> None:
    """Redaction on Presidio's synthetic set: detection per entity type (precision, recall,
    F2: span level, any character overlap with the same mapped type), latency (p50, p99)
    pattern-only and with NER, the leak rate under the default pseudonymize-everything
    policy, the round trip through a peer that echoes its prompt (whole and streamed in
    random chunks), and the answer-quality cost of pseudonymization on extraction
    questions answered by the bundled SmolLM2 (cached in ~/.cache/consortium/eval)."""
    import json

    from consortium.cli.common import out, write_through
    from consortium.evaluation.redaction_eval import detect_rows, evaluate_detection, load_rows
    from consortium.evaluation.redaction_quality import evaluate_quality
    from consortium.evaluation.redaction_roundtrip import evaluate_policy
    from consortium.redaction.detector import Detector, presidio_baseline
    from consortium.redaction.settings import DetectionSettings

    def go() -> dict[str, Any]:
        rows = load_rows(limit=limit)
        with_ner = Detector(DetectionSettings())
        pattern_only = Detector(DetectionSettings(ner=False))
        detected = detect_rows(with_ner, rows)
        result = evaluate_detection(
            with_ner,
            pattern_only,
            rows,
            latency_messages=latency_messages,
            baseline=presidio_baseline(with_ner.settings.spacy_model),
            detected=detected,
        )
        result.update(evaluate_policy(rows, detected.spans, splits=splits))
        if not no_quality:
            with progress_bars()() as start:
                result["_quality"] = evaluate_quality(
                    rows, with_ner, items=quality_items, start=start
                )
        return result

    result = run(go)
    if as_json:
        write_through(json.dumps(result, separators=(",", ":")) + "\n")
        return
    print_bench(result, False, ["labelled", "detected", "precision", "recall", "f2", "met"])
    out.print({"leaks_after_masking": result["_leaks"], "latency": result["_latency"]})
    out.print({"presidio_default": result["_baseline_presidio_default"]})
    out.print({"policy_leaks": result["_policy_leaks"]})
    trip = {k: v for k, v in result["_round_trip"].items() if k != "failures"}
    out.print({"round_trip": trip})
    if "_quality" in result:
        out.print({"quality": result["_quality"]})
    out.print(result["_targets"])
