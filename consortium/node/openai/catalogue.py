"""The models the OpenAI-compatible endpoint offers, and the route each stands for.

- the node's own model (its name, e.g. `smollm2-135m`): the local model answers
  (route `local`, whatever the node's router would decide);
- `consortium/auto`: the node decides as for an A2A task without options (its router);
- `ORG/MODEL` for every other active member of the federation: that member answers
  (option `peer`). MODEL is each model the roster declares for it
  (`capabilities.models`); `ORG/default` names the member whatever it runs, and is
  listed for a member that declares none. The member answers with its own model: the
  name after the slash chooses nothing at the member. A member this node's trust layer
  has quarantined is not listed (nor found by /v1/models/NAME); a request naming it is
  still resolved, so that it gets the trust layer's refusal rather than "unknown model".
- `group/NAME` for every configured group ([groups.NAME]): option `route` NAME (groups
  answer multiple-choice tasks: send `consortium.choices`). A group that cannot run now
  (too few members allowed, and `on_short = "refuse"`) is not listed.

Names are matched in that order (an organization called `group` or `consortium` is
reached as `ORG/default` or by its declared models only where no group or the auto
model claims the name). Anything else is unknown: 404 model_not_found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.federation.roster import Member

AUTO = "consortium/auto"
GROUP_PREFIX = "group/"
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class ModelRoute:
    """One model name: who owns it, and the request options it stands for."""

    id: str
    owned_by: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Whether the node's own model answers (no peer, group or router)."""
        return self.options.get("route") == "local"


class Catalogue:
    """The node's model names, read anew on each call (the roster may change)."""

    def __init__(
        self,
        org_id: str,
        own_model: Callable[[], str],
        *,
        members: Callable[[], Sequence[Member]] | None = None,
        groups: Sequence[str] = (),
        quarantined: Callable[[], frozenset[str]] = frozenset,
        group_runs: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self._org = org_id
        self._own = own_model
        self._members = members
        self._groups = tuple(groups)
        self._quarantined = quarantined
        self._group_runs = group_runs
        self.created = int(time.time())

    def models(self) -> list[ModelRoute]:
        org = self._org
        out = [
            ModelRoute(self._own(), org, {"route": "local"}),
            ModelRoute(AUTO, org),
        ]
        quarantined = self._quarantined()
        for member in self._peers():
            if member.org_id in quarantined:
                continue
            for model in member.capabilities.models or [DEFAULT_MODEL]:
                out.append(ModelRoute(f"{member.org_id}/{model}", member.org_id, _peer(member)))
        out.extend(
            ModelRoute(f"{GROUP_PREFIX}{name}", org, {"route": name})
            for name in self._groups
            if self._group_runs(name)
        )
        return out

    def listed(self, model: str) -> ModelRoute | None:
        """The route `model` stands for if `models()` lists it now, else None."""
        route = self.resolve(model)
        if route is None:
            return None
        if route.options.get("peer") in self._quarantined():
            return None
        group = route.options.get("route")
        if group in self._groups and not self._group_runs(group):
            return None
        return route

    def resolve(self, model: str) -> ModelRoute | None:
        """The route `model` stands for; None for a name this node does not offer."""
        if model == self._own():
            return ModelRoute(model, self._org, {"route": "local"})
        if model == AUTO:
            return ModelRoute(model, self._org)
        if model.startswith(GROUP_PREFIX) and model[len(GROUP_PREFIX) :] in self._groups:
            return ModelRoute(model, self._org, {"route": model[len(GROUP_PREFIX) :]})
        org, slash, name = model.partition("/")
        if not slash:
            return None
        for member in self._peers():
            if member.org_id == org and (
                name == DEFAULT_MODEL or name in member.capabilities.models
            ):
                return ModelRoute(model, org, _peer(member))
        return None

    def _peers(self) -> list[Member]:
        if self._members is None:
            return []
        return [m for m in self._members() if m.org_id != self._org and m.status == "active"]


def _peer(member: Member) -> dict[str, Any]:
    return {"peer": member.org_id}
