"""`consortium net set | show`: the emulated network between organizations in namespaces
— each link's delay, jitter, loss, bandwidth, resets, stalls and partitions, in the
links file the link proxies watch (consortium/launch/links.py). Parsing and printing only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from consortium.cli.common import out, run

FILE = typer.Argument(
    help="The links file (a launcher writes it beside its namespaces), or the federation "
    "file (.toml) of a federation `up --isolate netns` runs: its DIRECTORY/links.json."
)


def net_set(
    file: Annotated[Path, FILE],
    link: Annotated[
        str | None, typer.Option(help="The link ORG:ORG (both ways); default: every link.")
    ] = None,
    delay: Annotated[str | None, typer.Option(help="One-way delay: 100ms, 1.5s.")] = None,
    jitter: Annotated[str | None, typer.Option(help="± jitter on the delay: 10ms.")] = None,
    loss: Annotated[
        str | None, typer.Option(help="Lost segments: 5% (each costs a retransmission timeout).")
    ] = None,
    rto: Annotated[str | None, typer.Option(help="Minimum retransmission timeout: 200ms.")] = None,
    rate: Annotated[
        str | None, typer.Option(help="Bandwidth per direction: 1mbit, 500kbit; 0 for none.")
    ] = None,
    reset: Annotated[
        str | None, typer.Option(help="Chunks that reset their connection: 1%.")
    ] = None,
    stall: Annotated[
        bool, typer.Option("--stall", help="Freeze the connections open now.")
    ] = False,
    partition: Annotated[
        bool, typer.Option("--partition", help="Nothing passes either way, silently.")
    ] = False,
    refuse: Annotated[
        bool, typer.Option("--refuse", help="Connections reset and refused (a host down).")
    ] = False,
    heal: Annotated[
        bool, typer.Option("--heal", help="End stalls, partitions and refusals.")
    ] = False,
) -> None:
    """Change a link's faults (or every link's); running link proxies apply them at once."""
    from consortium.errors import ConfigError
    from consortium.launch.launcher import links_file
    from consortium.launch.links import (
        parse_duration_ms,
        parse_rate_kbit,
        parse_share,
        set_faults,
    )

    def go() -> None:
        changes: dict[str, Any] = {}
        if delay is not None:
            changes["delay_ms"] = parse_duration_ms(delay, "--delay")
        if jitter is not None:
            changes["jitter_ms"] = parse_duration_ms(jitter, "--jitter")
        if loss is not None:
            changes["loss"] = parse_share(loss, "--loss")
        if rto is not None:
            changes["rto_ms"] = parse_duration_ms(rto, "--rto")
        if rate is not None:
            changes["rate_kbit"] = parse_rate_kbit(rate, "--rate")
        if reset is not None:
            changes["reset"] = parse_share(reset, "--reset")
        for flag, on in (("stall", stall), ("partition", partition), ("refuse", refuse)):
            if on and heal:
                raise ConfigError(f"--{flag} and --heal together", key="--heal")
            if on:
                changes[flag] = True
        if not changes and not heal:
            raise ConfigError("nothing to change (see --help)", key="net set")
        path = links_file(file)
        links = set_faults(path, link, changes, heal=heal)
        out.print(f"{path}: version {links.version}", highlight=False)

    run(go)


def net_show(file: Annotated[Path, FILE]) -> None:
    """Each link's faults, as the link proxies apply them."""
    from consortium.launch.launcher import links_file
    from consortium.launch.links import describe, load_links

    links = run(lambda: load_links(links_file(file)))
    for line in describe(links):
        out.print(line, highlight=False, soft_wrap=True)


def group() -> typer.Typer:
    """The `net` command group (registered by cli/app.py)."""
    net_app = typer.Typer(
        help="The emulated network between organizations in namespaces (link faults).",
        no_args_is_help=True,
    )
    net_app.command("set")(net_set)
    net_app.command("show")(net_show)
    return net_app
