"""PNG plots of benchmark runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_routing(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = result["_setup"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, c in result["_curves"].items():
        style = {"random": "--", "oracle": ":"}.get(name, "-")
        apgr = result[name]["apgr"]
        ax.plot(
            [100 * x for x in c["share"]],
            [100 * y for y in c["accuracy"]],
            style,
            label=f"{name} (APGR {apgr:.2f})",
            linewidth=1.2,
        )
    ax.axhline(100 * setup["local_accuracy"], color="grey", linewidth=0.6)
    ax.axhline(100 * setup["strong_accuracy"], color="grey", linewidth=0.6)
    ax.set_xlabel(f"tasks escalated to {setup['strong_model']} (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(
        f"Routing {setup['local_model']} -> {setup['strong_model']} on "
        f"{setup['evaluation_split']} ({setup['items']} items)"
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_collaboration(result: dict[str, Any], path: Path) -> Path:
    """Accuracy of each protocol and single model, with the gain intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, v) for k, v in result.items() if not k.startswith("_")]
    names = [k for k, _ in rows]
    acc = [100 * v["accuracy"] for _, v in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ax.barh(names, acc, color=["#888" if "gain_ci95" not in v else "#4a7" for _, v in rows])
    for i, (_, v) in enumerate(rows):
        ax.text(100 * v["accuracy"] + 0.3, i, f"{100 * v['accuracy']:.1f} %", va="center")
    ax.set_xlabel("accuracy (%)")
    setup = result["_setup"]
    ax.set_title(f"Collaboration on {setup['evaluation_split']} ({setup['items']} items)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_federated(result: dict[str, Any], path: Path) -> Path:
    """Held-out classifier AUC and APGR per round of each federated run, against the
    centralised and the local-only routers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = result["_setup"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, metric, title in (
        (axes[0], "classifier_auc", "held-out classifier AUC"),
        (axes[1], "apgr", "held-out routing APGR"),
    ):
        for name, curve in result["_curves"].items():
            ax.plot(
                [c["round"] for c in curve],
                [c[metric] for c in curve],
                marker="o",
                markersize=3,
                label=name.removeprefix("federated_"),
            )
        ax.axhline(
            result["centralised"][metric], color="black", linestyle="--", label="centralised"
        )
        for i in range(setup["orgs"]):
            ax.axhline(
                result[f"local_org{i}"][metric],
                color="grey",
                linestyle=":",
                linewidth=0.8,
                label="local-only (each org)" if i == 0 else None,
            )
        ax.axhline(result["random"][metric], color="red", linewidth=0.6, label="random")
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Federated routing policy: {setup['orgs']} organizations split by topic, "
        f"{setup['held_out_items']} held-out items"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
