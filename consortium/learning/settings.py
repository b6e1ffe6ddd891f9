"""The settings of a federated training run, in one place.

`TrainOptions` is what a user chooses (rounds, strategy, optimiser, label, held-out share,
differential privacy); `consortium federation train` and `consortium bench federated` take
their options from its fields (consortium/cli/options.py; tests/cli checks them).
`RunSettings` adds what the coordinator fills in (the feature names, the organizations,
where the artifact goes, its version) and is Flower's run config: `to_config()` writes its
kebab-case keys — those of `[tool.flwr.app.config]` in consortium/learning/flower/
pyproject.toml, checked by a test — and `from_config()` reads them back in the ClientApp
and the ServerApp. The optimiser's own settings are derived from it (`optimiser()`).

A bad value raises a ConfigError naming the key the way its caller spells it: a run
config key (`run config dp-clip`) or a command-line option (`--dp-clip`).

Light imports only (pydantic, no numpy or Flower): the CLI imports this module at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from consortium.errors import ConfigError
from consortium.protocols.multiple_choice import Normalisation

if TYPE_CHECKING:
    from consortium.learning.optimiser import TrainSettings

# What the policy predicts: the local answer is right, or escalating to the peer helps.
Label = Literal["local_correct", "escalation_helps"]
Strategy = Literal["fedavg", "fedprox"]
# The value types of a Flower run config.
ConfigValue = bool | int | float | str


def config_key(field: str) -> str:
    """A field's key in the run config: its name in kebab case (`learning-rate`)."""
    return field.replace("_", "-")


def run_config_key(field: str) -> str:
    """How a refusal names a run config key."""
    return f"run config {config_key(field)}"


class SettingsModel(BaseModel):
    """Frozen, no unknown fields, finite numbers; `parse` names a bad value's key."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True
    )

    @classmethod
    def parse(cls, values: Mapping[str, object], name: Callable[[str], str]) -> Self:
        """Validated settings from values by field name; a bad value raises a ConfigError
        naming the field as `name` spells it (a run config key, a CLI option)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as e:
            raise _refusal(e.errors()[0], name) from None


class TrainOptions(SettingsModel):
    """What a user chooses for a run. Every field is an option of `consortium federation
    train` (`--rounds`, `--learning-rate`, ...) with this default, range and help."""

    rounds: int = Field(default=10, ge=1, le=1000, description="Federated rounds.")
    strategy: Strategy = Field(default="fedavg", description="fedavg, or fedprox for non-IID data.")
    proximal_mu: float = Field(default=0.1, ge=0.0, description="FedProx's mu.")
    local_steps: int = Field(default=10, ge=1, description="Gradient steps per round.")
    # Measured on the routing records of ARC (consortium bench federated): a step of 0.5
    # oscillates on the 396 standardised features; 0.1 converges.
    learning_rate: float = Field(default=0.1, gt=0.0, description="Gradient descent step size.")
    l2: float = Field(default=0.1, ge=0.0, description="L2 penalty.")
    label: Label = Field(
        default="local_correct",
        description="What the policy predicts: local_correct or escalation_helps.",
    )
    held_out: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of each organization's records it keeps for evaluation.",
    )
    # Central differential privacy (Flower's server-side fixed clipping).
    dp_noise: float = Field(
        default=0.0,
        ge=0.0,
        description="Differential privacy: noise multiplier (0: off); epsilon is reported.",
    )
    dp_clip: float = Field(
        default=1.0, gt=0.0, description="Differential privacy: clipping norm per update."
    )
    dp_delta: float = Field(
        default=1e-5, gt=0.0, lt=1.0, description="Differential privacy: delta."
    )

    def optimiser(self, proximal_mu: float = 0.0) -> TrainSettings:
        """The optimiser's settings for one round of local training; `proximal_mu` is
        FedProx's term as the server sends it (0 for FedAvg)."""
        from consortium.learning.optimiser import TrainSettings  # numpy: not at start-up

        return TrainSettings(self.local_steps, self.learning_rate, self.l2, proximal_mu)


class RunSettings(TrainOptions):
    """One run's config (`flwr run --run-config`, or the simulation's): the options and
    what the coordinator fills in."""

    # Required: the app's pyproject.toml holds "[]", which a run refuses.
    feature_names: tuple[str, ...] = Field(
        min_length=1, description="The policy's features, in order (a JSON list in the config)."
    )
    min_nodes: int = Field(default=1, ge=1, description="Organizations that must take part.")
    out: str = Field(default="", description="Where the ServerApp writes the unsigned artifact.")
    history: str = Field(default="", description="Where it writes per-round metrics (JSON).")
    version: str = Field(default="", description="The policy's version (default: fed-<time>).")
    federation_id: str = Field(default="", description="The federation the artifact is for.")
    embedding_model: str = Field(default="", description="The sentence encoder of the features.")
    normalisation: Normalisation = Field(
        default="none", description="How the draft's option scores were normalised."
    )
    data_dir: str = Field(
        default="", description="Simulation: the directory of org-<partition-id>.sqlite3 databases."
    )

    @classmethod
    def of(cls, options: TrainOptions, **run: object) -> RunSettings:
        """`options` with what the coordinator fills in (RunSettings' fields by name; a
        TrainOptions field given here replaces the option)."""
        return cls.parse({**options.model_dump(), **run}, run_config_key)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RunSettings:
        """Reads a run config (kebab-case keys; a missing key takes its default). Refuses
        an unknown key, a bad value and a run without feature names, naming the key."""
        fields = {config_key(f): f for f in cls.model_fields}
        values: dict[str, object] = {}
        for key, value in config.items():
            if key not in fields:
                raise ConfigError("not a setting of this run", key=f"run config {key}")
            values[fields[key]] = value
        if "feature_names" in values:
            values["feature_names"] = _feature_names(values["feature_names"])
        return cls.parse(values, run_config_key)

    def to_config(self) -> dict[str, ConfigValue]:
        """The run config (what `from_config` reads back to these settings)."""
        config: dict[str, ConfigValue] = {}
        for field, value in self.model_dump().items():
            config[config_key(field)] = (
                json.dumps(list(value)) if field == "feature_names" else value
            )
        return config


def _feature_names(value: object) -> tuple[str, ...]:
    """The run config holds the feature names as a JSON list of strings."""
    try:
        names = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"expected a JSON list of strings, got {value!r:.80}",
            key=run_config_key("feature_names"),
        )
    return tuple(names)


_BOUNDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}
_TYPES = {"int": "int", "float": "float", "string": "str", "tuple": "a list"}


def _expected(err: ErrorDetails) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if kind == "literal_error":
        return str(ctx["expected"]).replace("'", "")
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        return f"{words} {ctx[bound]}"
    if kind == "finite_number":
        return "expected a finite number"
    if kind == "too_short":
        return f"at least {ctx['min_length']} required"
    for prefix, what in _TYPES.items():
        if kind.startswith(prefix + "_"):
            return f"expected {what}"
    return err["msg"]


def _refusal(err: ErrorDetails, name: Callable[[str], str]) -> ConfigError:
    field = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        return ConfigError("not a setting of this run", key=name(field))
    if err["type"] == "missing":
        return ConfigError("required", key=name(field))
    return ConfigError(f"{_expected(err)}, got {err['input']!r:.80}", key=name(field))
