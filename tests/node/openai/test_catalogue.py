"""Model names and the routes they stand for (`node/openai/catalogue.py`), with roster
members as the roster holds them."""

from __future__ import annotations

from consortium.federation.roster import Capabilities, Member, MemberKey
from consortium.node.openai.catalogue import Catalogue


def member(org: str, models: list[str], status: str = "active") -> Member:
    return Member(
        org_id=org,
        status=status,  # type: ignore[arg-type]
        capabilities=Capabilities(models=models),
        keys=[MemberKey(kid=f"{org}-1", x="A" * 43)],
    )


def test_models_and_routes() -> None:
    members = [
        member("acme", ["smollm2-135m"]),
        member("globex", ["gemma3-270m", "smollm2-135m"]),
        member("initech", []),
        member("umbrella", ["x"], status="suspended"),
    ]
    catalogue = Catalogue("acme", lambda: "smollm2-135m", members=lambda: members, groups=["trio"])
    ids = [m.id for m in catalogue.models()]
    assert ids == [
        "smollm2-135m",
        "consortium/auto",
        "globex/gemma3-270m",
        "globex/smollm2-135m",
        "initech/default",
        "group/trio",
    ]
    owners = {m.id: m.owned_by for m in catalogue.models()}
    assert owners["globex/gemma3-270m"] == "globex" and owners["group/trio"] == "acme"

    def options(name: str) -> object:
        route = catalogue.resolve(name)
        return None if route is None else route.options

    assert options("smollm2-135m") == {"route": "local"}
    assert catalogue.resolve("smollm2-135m").local  # type: ignore[union-attr]
    assert options("consortium/auto") == {}
    assert options("globex/gemma3-270m") == {"peer": "globex"}
    assert options("globex/default") == {"peer": "globex"}
    assert options("initech/default") == {"peer": "initech"}
    assert options("group/trio") == {"route": "trio"}
    for unknown in ("globex/gpt-4", "acme/default", "umbrella/x", "group/none", "gpt-4", "", "/"):
        assert catalogue.resolve(unknown) is None, unknown


def test_a_node_outside_a_federation() -> None:
    catalogue = Catalogue("solo", lambda: "echo")
    assert [m.id for m in catalogue.models()] == ["echo", "consortium/auto"]
    assert catalogue.resolve("solo/default") is None


def test_quarantined_members_and_groups_that_cannot_run_are_not_listed() -> None:
    members = [member("acme", []), member("globex", ["g"]), member("initech", [])]
    quarantined: set[str] = {"globex"}
    catalogue = Catalogue(
        "acme",
        lambda: "echo",
        members=lambda: members,
        groups=["trio", "duo"],
        quarantined=lambda: frozenset(quarantined),
        group_runs=lambda name: name != "trio",
    )
    ids = [m.id for m in catalogue.models()]
    assert ids == ["echo", "consortium/auto", "initech/default", "group/duo"]
    assert catalogue.listed("globex/g") is None and catalogue.listed("group/trio") is None
    # Resolved all the same: a request naming them gets the trust layer's refusal.
    assert catalogue.resolve("globex/g") is not None
    assert catalogue.listed("initech/default") is not None
    quarantined.clear()
    assert catalogue.listed("globex/g") is not None
