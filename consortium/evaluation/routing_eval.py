"""`consortium bench routing`: every router replayed over cached model outputs.

The local model (SmolLM2 by default) and the peer's (Gemma-3) outputs on each item come
from consortium/evaluation/outputs.py. Each router scores every item from what the origin
has locally (the question, the local model's draft and confidence, a sentence embedding);
sorting by score gives the whole cost-quality curve at once, and the metrics of
consortium/evaluation/metrics.py summarise it against the random router and the oracle.
Choices (score normalisation, the learned router's label and regularisation, operating
thresholds) are made on the tuning split and reported on the evaluation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from consortium.evaluation.datasets import Item
from consortium.evaluation.embedding_cache import question_text
from consortium.evaluation.metrics import (
    Curve,
    Interval,
    bootstrap,
    curve,
    curve_metrics,
    oracle_curve,
    random_curve,
    router_metrics,
)
from consortium.evaluation.outputs import ItemOutput
from consortium.learning.policy import (
    LogisticPolicy,
    PolicyArtifact,
    fit_logistic,
    write_policy,
)
from consortium.learning.settings import Label
from consortium.protocols.multiple_choice import Normalisation, argmax
from consortium.protocols.routing import SIGNALS, Draft, HeuristicRouter, RoutingInput
from consortium.protocols.routing_features import feature_names, features

NORMALISATIONS: tuple[Normalisation, ...] = get_args(Normalisation)


@dataclass(frozen=True)
class SplitData:
    """One split: its items, both models' outputs and the question embeddings."""

    name: str
    items: list[Item]
    local: dict[str, ItemOutput]
    strong: dict[str, ItemOutput]
    embeddings: dict[str, npt.NDArray[np.float32]]


def correct(outputs: dict[str, ItemOutput], items: Sequence[Item], norm: Normalisation) -> Any:
    return np.array(
        [argmax(outputs[it.id].scores.normalised(norm)) == it.answer for it in items], dtype=bool
    )


def best_normalisation(outputs: dict[str, ItemOutput], items: Sequence[Item]) -> Normalisation:
    return max(NORMALISATIONS, key=lambda n: float(correct(outputs, items, n).mean()))


def draft_of(output: ItemOutput, norm: Normalisation) -> Draft:
    g = output.generated
    # The cache keeps the mean and minimum of the generated tokens' log-probabilities,
    # the two statistics the signals use; this sequence has exactly those.
    if g.tokens > 1:
        rest = (g.mean_logprob * g.tokens - g.min_logprob) / (g.tokens - 1)
        lps: tuple[float, ...] = (g.min_logprob,) + (rest,) * (g.tokens - 1)
    else:
        lps = (g.min_logprob,) if g.tokens else ()
    return Draft(
        text=g.text,
        token_logprobs=lps,
        first_entropy=g.first_entropy,
        option_probs=tuple(output.scores.probabilities(norm)),
    )


def tokens_of(output: ItemOutput) -> int:
    """What answering one item costs a model: the prompt, each option scored, the draft."""
    return output.prompt_tokens + sum(output.scores.tokens) + output.generated.tokens


def feature_matrix(data: SplitData, norm: Normalisation) -> npt.NDArray[np.float64]:
    rows = []
    for it in data.items:
        out = data.local[it.id]
        rows.append(
            features(
                question_text(it),
                draft_of(out, norm),
                data.embeddings[it.id].tolist(),
                out.generated.choice,
            )
        )
    return np.asarray(rows, dtype=np.float64)


def labels(data: SplitData, label: Label, norms: tuple[Normalisation, Normalisation]) -> Any:
    local = correct(data.local, data.items, norms[0])
    strong = correct(data.strong, data.items, norms[1])
    return local if label == "local_correct" else (strong & ~local)


def learned_scores(policy: LogisticPolicy, x: npt.NDArray[np.float64]) -> Any:
    """Escalation scores: P(local inadequate), or P(escalating helps)."""
    p = policy.probability(x)
    return 1.0 - p if policy.artifact.label == "local_correct" else p


def train_router(
    train: SplitData,
    norms: tuple[Normalisation, Normalisation],
    *,
    label: Label,
    c: float,
    version: str = "bench",
) -> PolicyArtifact:
    x = feature_matrix(train, norms[0])
    dim = x.shape[1] - len(feature_names(0))
    return fit_logistic(
        x,
        labels(train, label, norms).astype(int),
        names=feature_names(dim),
        version=version,
        label=label,
        c=c,
        embedding_model="all-MiniLM-L6-v2",
        normalisation=norms[0],
    )


def cross_fitted_scores(
    data: SplitData,
    norms: tuple[Normalisation, Normalisation],
    *,
    label: Label,
    c: float,
    folds: int = 5,
    seed: int = 0,
) -> Any:
    """Each item scored by a router trained on the other folds."""
    n = len(data.items)
    order = np.random.default_rng(seed).permutation(n)
    x = feature_matrix(data, norms[0])
    scores = np.zeros(n)
    for k in range(folds):
        held = order[k::folds]
        kept = np.setdiff1d(order, held)
        part = SplitData(
            data.name,
            [data.items[i] for i in kept],
            data.local,
            data.strong,
            data.embeddings,
        )
        policy = LogisticPolicy(train_router(part, norms, label=label, c=c))
        scores[held] = learned_scores(policy, x[held])
    return scores


@dataclass(frozen=True)
class LearnedChoice:
    label: Label
    c: float
    cv_apgr: float


def tune_learned(
    dev: SplitData, norms: tuple[Normalisation, Normalisation], *, grid: Sequence[float]
) -> LearnedChoice:
    """The label and regularisation with the best cross-validated APGR on the dev split."""
    weak = correct(dev.local, dev.items, norms[0])
    strong = correct(dev.strong, dev.items, norms[1])
    best: LearnedChoice | None = None
    for label in get_args(Label):
        for c in grid:
            try:
                s = cross_fitted_scores(dev, norms, label=label, c=c)
            except ValueError:  # a fold without both classes: too few items for this label
                continue
            apgr = router_metrics(list(s), list(weak), list(strong)).apgr
            if best is None or apgr > best.cv_apgr:
                best = LearnedChoice(label, c, apgr)
    if best is None:
        raise ValueError(f"{dev.name} has too few items of each class to train a router on")
    return best


def heuristic_scores(data: SplitData) -> Any:
    router = HeuristicRouter()
    return np.array([router.score(RoutingInput(question_text(it))) for it in data.items])


def self_scores(data: SplitData, norm: Normalisation, signal: str) -> Any:
    return np.array(
        [-draft_of(data.local[it.id], norm).signal(signal) for it in data.items]  # type: ignore[arg-type]
    )


@dataclass
class RouterResult:
    auc: float
    apgr: float
    cpt50: float
    cpt80: float
    accuracy: float
    escalation_rate: float
    tokens: int
    ci: dict[str, Interval] = field(default_factory=dict)
    curve: Curve | None = None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "accuracy": round(self.accuracy, 4),
            "auc": round(self.auc, 4),
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "escalation_rate": round(self.escalation_rate, 4),
            "tokens": self.tokens,
        }
        for name, interval in self.ci.items():
            d[f"{name}_ci95"] = [round(interval.low, 4), round(interval.high, 4)]
        return d


def _operating_point(
    test_scores: Any, threshold: float, weak: Any, strong: Any, local_t: Any, strong_t: Any
) -> tuple[float, float, int]:
    escalate = test_scores > threshold
    acc = float(np.where(escalate, strong, weak).mean())
    tokens = int(local_t.sum() + strong_t[escalate].sum())
    return acc, float(escalate.mean()), tokens


def evaluate_routers(
    dev: SplitData,
    test: SplitData,
    *,
    rate: float = 0.5,
    c_grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0),
    bootstrap_samples: int = 1000,
    progress: Callable[[str], None] | None = None,
    policy_out: Path | None = None,
) -> dict[str, Any]:
    """All routers on `test`, tuned on `dev`; the dict `--json` prints."""
    say = progress or (lambda _: None)
    norms = (best_normalisation(dev.local, dev.items), best_normalisation(dev.strong, dev.items))
    weak = correct(test.local, test.items, norms[0])
    strong = correct(test.strong, test.items, norms[1])
    local_t = np.array([tokens_of(test.local[it.id]) for it in test.items])
    strong_t = np.array([tokens_of(test.strong[it.id]) for it in test.items])

    scorers: dict[str, tuple[Any, Any]] = {}  # name -> (dev scores, test scores)
    say("heuristic")
    scorers["heuristic"] = (heuristic_scores(dev), heuristic_scores(test))
    for signal in SIGNALS:
        say(f"self:{signal}")
        scorers[f"self:{signal}"] = (
            self_scores(dev, norms[0], signal),
            self_scores(test, norms[0], signal),
        )
    say("learned: tuning on the dev split")
    choice = tune_learned(dev, norms, grid=c_grid)
    artifact = train_router(dev, norms, label=choice.label, c=choice.c)
    policy = LogisticPolicy(artifact)
    scorers["learned"] = (
        learned_scores(policy, feature_matrix(dev, norms[0])),
        learned_scores(policy, feature_matrix(test, norms[0])),
    )
    rng = np.random.default_rng(0)
    scorers["random"] = (rng.random(len(dev.items)), rng.random(len(test.items)))

    w, s = float(weak.mean()), float(strong.mean())
    results: dict[str, RouterResult] = {}
    for name, (dev_scores, test_scores) in scorers.items():
        say(f"metrics: {name}")
        if name == "random":
            m = router_metrics([0.0] * len(weak), list(weak), list(strong))  # expected line
            c = random_curve(w, s)
        else:
            m = router_metrics(list(test_scores), list(weak), list(strong))
            c = curve(list(test_scores), list(weak), list(strong))
        threshold = float(np.quantile(dev_scores, 1.0 - rate))
        acc, esc, tokens = _operating_point(test_scores, threshold, weak, strong, local_t, strong_t)
        results[name] = RouterResult(
            m.auc,
            m.apgr,
            m.cpt50,
            m.cpt80,
            acc,
            esc,
            tokens,
            ci={}
            if name == "random"
            else bootstrap(list(test_scores), list(weak), list(strong), samples=bootstrap_samples),
            curve=c,
        )
    oracle = oracle_curve(list(weak), list(strong))
    om = curve_metrics(oracle, w, s)
    gains = strong & ~weak
    results["oracle"] = RouterResult(
        om.auc,
        om.apgr,
        om.cpt50,
        om.cpt80,
        float((weak | strong).mean()),
        float(gains.mean()),
        int(local_t.sum() + strong_t[gains].sum()),
        curve=oracle,
    )
    if policy_out is not None:
        metrics = {"test_apgr": results["learned"].apgr, "test_auc": results["learned"].auc}
        write_policy(policy_out, artifact.model_copy(update={"metrics": metrics}))
    out: dict[str, Any] = {name: r.as_json() for name, r in results.items()}
    out["_setup"] = {
        "tuning_split": dev.name,
        "evaluation_split": test.name,
        "items": len(test.items),
        "local_model": next(iter(test.local.values())).model,
        "strong_model": next(iter(test.strong.values())).model,
        "local_accuracy": round(w, 4),
        "strong_accuracy": round(s, 4),
        "local_accuracy_ci95": _ci(weak),
        "strong_accuracy_ci95": _ci(strong),
        "normalisation": {"local": norms[0], "strong": norms[1]},
        "learned": {"label": choice.label, "C": choice.c, "dev_cv_apgr": round(choice.cv_apgr, 4)},
        "operating_rate": rate,
    }
    out["_curves"] = {
        name: {"share": r.curve.share.tolist(), "accuracy": r.curve.accuracy.tolist()}
        for name, r in results.items()
        if r.curve is not None
    }
    return out


def _ci(correct_items: Any) -> list[float]:
    from consortium.evaluation.metrics import accuracy_interval

    i = accuracy_interval(list(correct_items))
    return [round(i.low, 4), round(i.high, 4)]
