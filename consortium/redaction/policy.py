"""node.toml's `[redaction]` policy: what happens to each detected entity type in a message
to each peer.

An action per entity type: `keep` (sent as it is), `pseudonymize` (a typed, numbered
placeholder the answer is restored from), `mask` (a typed placeholder without a number:
irreversible) or `block` (the message must not leave). `default` is the action for every
detected type the policy does not name; with redaction enabled it is `pseudonymize`.

Overrides, from the least to the most specific: the base `actions`; `[[redaction.rules]]`
in order, each applying to the peers whose roster attributes (`jurisdiction`, `region`)
match its `when` (a later rule wins over an earlier one); `[redaction.peers.ORG]` for one
member. Each override may set its own `default` and `actions`.

`RedactionPolicy` also holds the detector's settings (it is a `DetectionSettings`): one
table configures both. `check_policy` runs the checks across keys after validation, and
the node checks at start that every `[redaction.peers.ORG]` is a member of the roster.
Redaction is off by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from consortium.errors import ConfigError
from consortium.redaction.settings import DetectionSettings, check_detection

Action = Literal["keep", "pseudonymize", "mask", "block"]
# When two detected spans overlap, the stricter action covers the text.
SEVERITY: dict[str, int] = {"keep": 0, "pseudonymize": 1, "mask": 2, "block": 3}
# The roster attributes a rule may match (a member's `capabilities`).
ATTRIBUTES: tuple[str, ...] = ("jurisdiction", "region")


class Override(BaseModel):
    """Actions that replace the base policy's for some peers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Action | None = None
    actions: dict[str, Action] = Field(default_factory=dict)


class AttributeRule(Override):
    """An override for the peers whose roster attributes match every key of `when`
    (compared without regard to case)."""

    when: dict[Literal["jurisdiction", "region"], str]

    @field_validator("when")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("`when` must name at least one of: " + ", ".join(ATTRIBUTES))
        if not all(v.strip() for v in value.values()):
            raise ValueError("`when` values must not be empty")
        return value


@dataclass(frozen=True)
class PeerActions:
    """The actions that apply to messages for one peer."""

    default: Action
    actions: Mapping[str, Action]

    def action(self, entity_type: str) -> Action:
        return self.actions.get(entity_type, self.default)

    @property
    def changes_anything(self) -> bool:
        return self.default != "keep" or any(a != "keep" for a in self.actions.values())


class RedactionPolicy(DetectionSettings):
    """The `[redaction]` table: the detector's settings and the actions."""

    enabled: bool = False
    # Receipts (the disclosures of what was withheld, and the signed messages) older
    # than this many days are deleted; 0 keeps them.
    receipts_days: Annotated[float, Field(ge=0, le=36500)] = 0.0
    default: Action = "pseudonymize"
    actions: dict[str, Action] = Field(default_factory=dict)
    peers: dict[str, Override] = Field(default_factory=dict)
    rules: tuple[AttributeRule, ...] = ()

    def for_peer(self, org: str, attributes: Mapping[str, str]) -> PeerActions:
        """The actions for messages to `org`, whose roster attributes are `attributes`."""
        default: Action = self.default
        actions: dict[str, Action] = dict(self.actions)
        overrides: list[Override] = [r for r in self.rules if _matches(r, attributes)]
        if org in self.peers:
            overrides.append(self.peers[org])
        for o in overrides:
            if o.default is not None:
                default = o.default
            actions.update(o.actions)
        return PeerActions(default, actions)


def _matches(rule: AttributeRule, attributes: Mapping[str, str]) -> bool:
    return all(
        attributes.get(k, "").strip().casefold() == v.strip().casefold()
        for k, v in rule.when.items()
    )


def check_policy(policy: RedactionPolicy, *, path: str | None, key: str = "redaction") -> None:
    """The checks across keys: the detector's, and every entity type an action names is
    one the detector knows. Raises ConfigError (one line naming the key)."""
    check_detection(policy, path=path, key=key)
    known = policy.known_entities()
    tables: list[tuple[str, Mapping[str, str]]] = [(f"{key}.actions", policy.actions)]
    tables += [(f"{key}.peers.{org}.actions", o.actions) for org, o in policy.peers.items()]
    tables += [(f"{key}.rules.{i}.actions", r.actions) for i, r in enumerate(policy.rules)]
    for where, actions in tables:
        for entity in actions:
            if entity not in known:
                raise ConfigError(
                    f"unknown entity type {entity!r} (not built in and no"
                    " [[redaction.recognizers]] entry defines it)",
                    path=path,
                    key=where,
                )


def check_peers(policy: RedactionPolicy, members: Mapping[str, bool], *, path: str | None) -> None:
    """Every `[redaction.peers.ORG]` names a member of the roster other than this node
    (`members`: org id -> whether it is this node)."""
    for org in sorted(policy.peers):
        if org not in members:
            raise ConfigError(
                "not a member of the federation's roster", path=path, key=f"redaction.peers.{org}"
            )
        if members[org]:
            raise ConfigError("names this node itself", path=path, key=f"redaction.peers.{org}")
