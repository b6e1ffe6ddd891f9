"""The link proxy of one organization's namespace: a `FaultProxy` per port of its node,
listening on the organization's bridge address and forwarding to its node inside the
namespace (launch/netns.py), each connection on the link of the organization it comes
from, with that link's faults from the links file (launch/links.py), re-read whenever
the file changes (its mtime, size or inode; checked every `POLL_S`).

    python -m consortium.launch.linkproxy --links FILE --org ORG --listen ADDR \\
        --upstream NODE_ADDR --port 50051 --port 8080

It prints `READY proxy org=... listen=ADDR ports=...` once it listens, logs each
version of the links file it applies (`links version N applied`) on stderr, and its
counters when it stops (connections, chunks, lost, held, resets), keeps the
faults it has when the file does not validate (and logs why), and stops on SIGTERM.
A connection from the organization's own address is on no link (no faults); one from an
address the file does not list (this machine, say) on the default link.

`link_proxy_command` is the argv a launcher starts it with (inside the namespace), and
`start_link_proxy` starts it under a supervisor and waits for its READY line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from consortium.errors import ConfigError
from consortium.launch.faultproxy import FaultProxy, LinkTable
from consortium.launch.links import LinkFaults, LinksFile, link_name, load_links
from consortium.launch.netns import Host
from consortium.launch.supervisor import Child, Supervisor

log = logging.getLogger("consortium.linkproxy")

POLL_S = 0.05
SELF = "self"  # the link of connections from the organization's own address: clean


def apply(table: LinkTable, links: LinksFile, org: str) -> None:
    """The file's faults onto the table of `org`'s proxies."""
    me = links.hosts.get(org)

    def resolve(host: str) -> str | None:
        other = links.org_at(host)
        if other is None:
            return None
        return SELF if other == org or host == me else link_name(other, org)

    table.resolve = resolve
    table.set(SELF, LinkFaults())
    table.set(None, links.default)
    for other in links.hosts:
        if other != org:
            table.set(link_name(other, org), links.faults(other, org))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def serve(
    links_path: Path,
    org: str,
    listen: str,
    upstream: str,
    ports: Sequence[int],
    stop: asyncio.Event | None = None,
) -> None:
    """Runs the proxies until `stop` is set (by default: SIGTERM or SIGINT)."""
    links = load_links(links_path)
    table = LinkTable(seed=links.seed)
    apply(table, links, org)
    log.info("links version %d applied", links.version)
    proxies = [
        await FaultProxy(f"{upstream}:{port}", host=listen, port=port, table=table).start()
        for port in ports
    ]
    print(
        f"READY proxy org={org} listen={listen} ports={','.join(str(p) for p in ports)}",
        flush=True,
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    seen = _stamp(links_path)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
            now = _stamp(links_path)
            if now == seen or now is None:
                continue
            seen = now
            try:
                links = load_links(links_path)
            except ConfigError as e:
                log.warning("links file not applied, the faults stay as they were: %s", e)
                continue
            apply(table, links, org)
            log.info("links version %d applied", links.version)
    finally:
        for proxy in proxies:
            await proxy.stop()
            log.info(
                "port %d: %d connections, %d chunks forwarded, %d lost (retransmitted), "
                "%d held, %d resets",
                proxy.port,
                proxy.accepted,
                proxy.chunks,
                proxy.lost,
                proxy.held,
                proxy.resets,
            )


def link_proxy_command(links: Path, host: Host, ports: Sequence[int]) -> list[str]:
    """The argv that runs `host`'s link proxy inside its namespace."""
    cmd = [
        *host.prefix,
        sys.executable,
        "-m",
        "consortium.launch.linkproxy",
        "--links",
        str(links.resolve()),
        "--org",
        host.org,
        "--listen",
        host.address,
        "--upstream",
        host.node_address,
    ]
    for port in ports:
        cmd += ["--port", str(port)]
    return cmd


def start_link_proxy(
    supervisor: Supervisor, links: Path, host: Host, ports: Sequence[int], timeout: float = 30.0
) -> Child:
    """Starts the link proxy of `host` under `supervisor` and waits until it listens."""
    return supervisor.start(
        f"linkproxy-{host.org}",
        link_proxy_command(links, host, ports),
        ready_line="READY proxy ",
        timeout=timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consortium.launch.linkproxy")
    parser.add_argument("--links", type=Path, required=True)
    parser.add_argument("--org", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CONSORTIUM_LINKPROXY_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(args.links, args.org, args.listen, args.upstream, args.port))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
