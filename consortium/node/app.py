"""One organization's node: the model worker, the task store and both A2A bindings.

gRPC (`lf.a2a.v1.A2AService`, grpc.aio; node/a2a/grpc_binding.py) and JSON-RPC over
HTTP (Starlette on uvicorn; node/a2a/http_binding.py) share one a2a-sdk request handler,
so both bindings see the same tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from a2a.server.agent_execution import AgentExecutor
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.types import a2a_pb2
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from grpc_reflection.v1alpha import reflection
from jwcrypto import jwk
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consortium.federation.watcher import RosterWatcher
from consortium.learning.records import RoutingRecords
from consortium.llm.base import LLMBackend
from consortium.llm.registry import default_prompt_format
from consortium.llm.worker import ModelWorker
from consortium.node.a2a.agent_card import JSONRPC_PATH, build_agent_card
from consortium.node.a2a.conformance import ConformanceExecutor
from consortium.node.a2a.executor import ModelExecutor
from consortium.node.a2a.grpc_binding import A2A_SERVICE, SpecGrpcHandler, a2a_generic_handler
from consortium.node.a2a.http_binding import CardLastModified, QuietServer, bind_tcp
from consortium.node.a2a.http_guard import RequestGuard
from consortium.node.a2a.request_handler import NodeRequestHandler, ResponseSigner
from consortium.node.auth import (
    Credentials,
    GrpcContextBuilder,
    HttpContextBuilder,
    http_credentials,
)
from consortium.node.config import NodeConfig, RoutingSection
from consortium.node.learned import LazyEncoder, PolicyHolder
from consortium.node.orchestrator import Orchestrator, check_groups
from consortium.node.peers import PeerClient
from consortium.node.service import NodeService, ServiceSettings
from consortium.node.store import SqliteTaskStore
from consortium.node.telemetry import TRACER_NAME, make_exporter, make_provider
from consortium.protocols.signed_message import MessageVerifier
from consortium.trust.api_keys import ApiKeys, parse_token
from consortium.trust.files import secure_directory
from consortium.trust.keys import load_private_key, load_public_key, public_jwk
from consortium.trust.replay import ReplayCache
from consortium.trust.tls import server_credentials, server_ssl_options

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Endpoints:
    grpc_port: int
    http_port: int
    grpc_target: str
    http_url: str


@dataclass(frozen=True)
class Federation:
    """What a node holds as a member of a federation."""

    roster: RosterWatcher
    verifier: MessageVerifier
    signer: ResponseSigner
    peers: PeerClient


class Node:
    """Runs one node until stopped. `start()` returns once both endpoints accept calls."""

    def __init__(self, config: NodeConfig, backend_factory: Callable[[], LLMBackend]) -> None:
        self.config = config
        self.worker = ModelWorker(backend_factory, label=config.node.org_id)
        self.store: SqliteTaskStore | None = None
        self.handler: NodeRequestHandler | None = None
        self.service: NodeService | None = None
        self.card: a2a_pb2.AgentCard | None = None
        self.endpoints: Endpoints | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.federation: Federation | None = None
        self.tracer_provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.replay: ReplayCache | None = None
        self.policy: PolicyHolder | None = None
        self.records: RoutingRecords | None = None
        self.keys: ApiKeys | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> Endpoints:
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> Endpoints:
        cfg = self.config
        secure_directory(cfg.data_dir)
        self.store = SqliteTaskStore(cfg.database_path)
        self.store.repair()
        self.store.fail_unfinished("the node stopped before the task finished")
        self.keys = ApiKeys(cfg.api_keys_path)
        self._housekeeping = asyncio.create_task(self._expire_tasks())
        federation = self._join_federation()  # before loading the model: fail fast
        check_groups(self.config.groups, self.config.node.org_id, federation is not None)
        info = await self.worker.start()
        fmt = cfg.model.prompt_format
        prompt_format = (
            default_prompt_format(
                cfg.model.name, cfg.model.path or None, self.worker.backend_for_thread()
            )
            if fmt == "auto"
            else fmt
        )
        limit = cfg.server.max_message_bytes
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 4 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
            ]
        )
        address = f"{cfg.server.host}:{cfg.server.grpc_port}"
        if cfg.tls is None:
            grpc_port = self._grpc.add_insecure_port(address)
        else:
            t = cfg.tls
            grpc_port = self._grpc.add_secure_port(
                address,
                server_credentials(
                    cfg.resolve(t.cert),
                    cfg.resolve(t.key),
                    cfg.resolve(t.ca) if t.client_auth else None,
                ),
            )
        if grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {cfg.server.host}:{cfg.server.grpc_port}")
        http_sock = bind_tcp(cfg.server.host, cfg.server.http_port)
        http_port = http_sock.getsockname()[1]
        host = cfg.advertised_host
        self.endpoints = Endpoints(
            grpc_port, http_port, f"{host}:{grpc_port}", f"{cfg.http_scheme}://{host}:{http_port}"
        )
        self.card = build_agent_card(
            org_id=cfg.node.org_id,
            display_name=cfg.node.display_name,
            description=cfg.node.description,
            grpc_url=self.endpoints.grpc_target,
            http_url=self.endpoints.http_url,
            model_name=info.name,
            model_backend=info.backend,
            context_size=info.context_size,
            public_keys=self._public_keys(),
            federation_id=federation.roster.current().federation_id if federation else "",
            mutual_tls=cfg.tls is not None and cfg.tls.client_auth,
        )
        tel = cfg.telemetry
        self.tracer_provider = make_provider(
            cfg.node.org_id,
            federation.roster.current().federation_id if federation else "",
            make_exporter(tel.exporter, path=cfg.data_dir / tel.path, endpoint=tel.endpoint),
        )
        self.tracer = self.tracer_provider.get_tracer(TRACER_NAME)
        if federation is not None:
            federation.peers.tracer = self.tracer
        orchestrator = await self._orchestrator(federation)
        self.service = NodeService(
            self.worker,
            ServiceSettings(
                org_id=cfg.node.org_id,
                prompt_format=prompt_format,
                system_prompt=cfg.model.system_prompt,
                max_tokens=cfg.model.max_tokens,
                temperature=cfg.model.temperature,
                stream_interval_s=cfg.server.stream_interval_s,
            ),
            peers=federation.peers if federation else None,
            tracer=self.tracer,
            orchestrator=orchestrator,
        )
        executor: AgentExecutor = ModelExecutor(
            self.service, signer=federation.signer if federation else None
        )
        if cfg.node.executor == "a2a-tck":
            executor = ConformanceExecutor(executor)
        self.handler = NodeRequestHandler(
            agent_executor=executor,
            task_store=self.store,
            agent_card=self.card,
            tracer=self.tracer,
            verifier=federation.verifier if federation else None,
            keys=self.keys,
            anonymous_loopback=cfg.auth.anonymous_loopback,
            member_cn=cfg.tls.member_cn if cfg.tls is not None else True,
        )
        self._grpc.add_generic_rpc_handlers(
            (a2a_generic_handler(SpecGrpcHandler(self.handler, GrpcContextBuilder())),)
        )
        reflection.enable_server_reflection(
            (A2A_SERVICE.full_name, reflection.SERVICE_NAME), self._grpc
        )
        await self._grpc.start()

        app = Starlette(
            routes=[
                *create_agent_card_routes(
                    self.card, cache_control=f"public, max-age={cfg.server.agent_card_max_age_s}"
                ),
                *create_jsonrpc_routes(
                    self.handler, rpc_url=JSONRPC_PATH, context_builder=HttpContextBuilder()
                ),
                Route("/healthz", self._healthz, methods=["GET"]),
            ]
        )
        self._http = QuietServer(
            uvicorn.Config(
                CardLastModified(RequestGuard(app, limit), AGENT_CARD_WELL_KNOWN_PATH),
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=int(cfg.server.shutdown_grace_s) or None,
                **self._http_tls(),
            )
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[http_sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        self._endpoints_file().write_text(json.dumps(dataclasses.asdict(self.endpoints)) + "\n")
        log.info(
            "node %s ready: model %s (%s), gRPC %s, HTTP %s",
            cfg.node.org_id,
            info.name,
            info.backend,
            self.endpoints.grpc_target,
            self.endpoints.http_url,
        )
        return self.endpoints

    async def _expire_tasks(self) -> None:
        """Deletes finished tasks past `server.task_retention_days`: now, then hourly."""
        days = self.config.server.task_retention_days
        if days <= 0:
            return
        while self.store is not None:
            try:
                n = await asyncio.to_thread(self.store.delete_expired, days)
            except sqlite3.Error as e:
                log.error("task retention: %s", e)
            else:
                if n:
                    log.info("deleted %d task(s) older than %g days", n, days)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    def _http_tls(self) -> dict[str, Any]:
        """uvicorn's TLS options: the HTTP port serves TLS whenever gRPC does, and requires
        client certificates under mutual TLS, so it never bypasses what gRPC enforces."""
        t = self.config.tls
        if t is None:
            return {}
        cfg = self.config
        return server_ssl_options(
            cfg.resolve(t.cert), cfg.resolve(t.key), cfg.resolve(t.ca) if t.client_auth else None
        )

    async def _healthz(self, request: Request) -> Response:
        host = request.client.host if request.client else None
        return JSONResponse(self.health(http_credentials(request.headers, host)))

    def health(self, creds: Credentials) -> dict[str, Any]:
        """Liveness for anyone; details (counters, roster, policy) only for a caller on
        loopback or holding an admin API key."""
        cfg = self.config
        body: dict[str, Any] = {"status": "ok"}
        token = parse_token(creds.authorization) if creds.authorization else None
        key = self.keys.authenticate(token) if token and self.keys is not None else None
        if not (creds.loopback or (key is not None and key.admin)):
            return body
        body.update({"org_id": cfg.node.org_id, "model": self.worker.info.name})
        if self.handler is not None:
            body["refusals"] = dict(self.handler.refusals)
        if self.federation is not None:
            roster = self.federation.roster
            body["federation"] = {
                "id": roster.current().federation_id,
                "roster_version": roster.current().version,
                "roster_reloads": roster.reloads,
                "rosters_refused": roster.refused,
                "messages_refused": dict(self.handler.refusals) if self.handler else {},
            }
        if self.records is not None:
            body["routing_records"] = self.records.counts()
        if self.policy is not None:
            body["routing_policy"] = {
                "loaded": self.policy.loaded,
                "refused": self.policy.refused,
                "version": self.policy.version,
            }
        return body

    def _join_federation(self) -> Federation | None:
        """Loads the roster (refusing an invalid one), the replay cache and the keys."""
        cfg = self.config
        fed = cfg.federation
        if fed is None:
            return None
        admin = load_public_key(cfg.resolve(fed.admin_key))
        watcher = RosterWatcher(cfg.resolve(fed.roster), [admin])
        roster = watcher.current()
        self.replay = ReplayCache(cfg.data_dir / "replay.sqlite3")
        key = load_private_key(cfg.resolve(cfg.identity.private_key))
        verifier = MessageVerifier(
            org_id=cfg.node.org_id,
            roster=watcher.current,
            replay=self.replay,
            skew_s=fed.max_clock_skew_s,
            own_key=jwk.JWK(**public_jwk(key)),
        )
        signer = ResponseSigner(org_id=cfg.node.org_id, federation_id=roster.federation_id, key=key)
        peers = PeerClient(
            signer=signer,
            verifier=verifier,
            roster=watcher,
            timeout_s=fed.peer_timeout_s,
            credentials=cfg.client_credentials(),
        )
        self.federation = Federation(watcher, verifier, signer, peers)
        log.info(
            "node %s joined federation %s (roster version %d, %d members)",
            cfg.node.org_id,
            roster.federation_id,
            roster.version,
            len(roster.members),
        )
        return self.federation

    async def _orchestrator(self, federation: Federation | None) -> Orchestrator:
        """Routing and groups as node.toml declares them ([routing], [groups.NAME]).

        The sentence encoder (MiniLM, ~500 MB) is loaded here, at start-up, when the
        configured router or its routing records need it; otherwise there is none, so no
        caller can make the node load it (a per-request learned route is then refused)."""
        cfg = self.config
        learned = None
        if cfg.routing.policy:
            keys = (
                [load_public_key(cfg.resolve(cfg.federation.admin_key))]
                if cfg.federation is not None
                else None
            )
            self.policy = PolicyHolder(
                cfg.resolve(cfg.routing.policy), keys, cfg.routing.threshold, cfg.routing.target
            )
            learned = self.policy.router
        if cfg.routing.record:
            self.records = RoutingRecords(cfg.database_path)
        encoder = None
        if needs_encoder(cfg.routing):
            encoder = LazyEncoder()
            await encoder.load()
        return Orchestrator(
            org_id=cfg.node.org_id,
            worker=self.worker,
            routing=cfg.routing,
            groups=dict(cfg.groups),
            peers=federation.peers if federation else None,
            learned=learned,
            embed=encoder.embed if encoder is not None else None,
            records=self.records,
        )

    def _public_keys(self) -> list[dict[str, Any]]:
        """The organization's public key for the agent card, if the node has one."""
        path = self.config.resolve(self.config.identity.public_key)
        if not path.exists():
            log.warning("no public key at %s: the agent card carries no signing key", path)
            return []
        return [public_jwk(load_public_key(path))]

    def _endpoints_file(self) -> Path:
        return endpoints_file(self.config)

    async def stop(self) -> None:
        """Stops accepting calls, lets in-flight tasks finish within the grace period,
        marks the rest failed, and closes the model and the database."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.shutdown_grace_s
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.handler is not None:
            try:
                await asyncio.wait_for(self.handler.aclose(), timeout=max(grace, 0.1))
            except TimeoutError:
                log.warning("in-flight tasks did not finish within %.1f s", grace)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._http_task, timeout=max(grace, 1.0))
        await self.worker.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the exporter
        if self.federation is not None:
            await self.federation.peers.close()
        if self.replay is not None:
            self.replay.close()
        if self.records is not None:
            self.records.close()
        if self.keys is not None:
            self.keys.close()
        if self.store is not None:
            self.store.fail_unfinished("the node shut down before the task finished")
            self.store.close()
        secure_directory(self.config.data_dir)
        if self.endpoints is not None:
            self._endpoints_file().unlink(missing_ok=True)
            log.info("node %s stopped", self.config.node.org_id)


def needs_encoder(routing: RoutingSection) -> bool:
    """The learned router embeds each question; so do routing records, which every router
    but `local` keeps (unless `record = false`)."""
    router = routing.router.split(":")[0]
    return bool(routing.policy) or router == "learned" or (routing.record and router != "local")


def endpoints_file(config: NodeConfig) -> Path:
    """Where a running node records the ports it actually bound (ports may be 0 in node.toml)."""
    return config.data_dir / "endpoints.json"


def running_http_url(config: NodeConfig) -> str:
    """The HTTP URL of the node running from this config: its recorded endpoints, if any."""
    path = endpoints_file(config)
    if path.exists():
        try:
            url = json.loads(path.read_text())["http_url"]
            if isinstance(url, str):
                return url
        except (ValueError, KeyError, TypeError):
            pass
    return config.http_url
