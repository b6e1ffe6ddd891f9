"""One organization's node: its parts built from node.toml, started in order, and stopped.

The `build_*` functions each make one part from the config: the task store, the
federation membership (roster, verifier, signer, peers), the model's prompt format, the
tracer provider, the orchestrator (routing, groups, learned policy, routing records),
the service that answers tasks, the A2A executor and request handler, the
OpenAI-compatible API (node/openai/). `Node` wires them with the model worker and both
A2A bindings (node/a2a/grpc_binding.py, node/a2a/http_binding.py), which share one
request handler, so both see the same tasks; the OpenAI API shares the HTTP port, the
service and the task store.

A federated node has one `Assessor` (trust/reputation.py), made by `build_assessor` or
handed to `Node(assessor=...)`: the exchange (peers.py) reports every call's outcome to
it, and routing (the peer client's candidates, the orchestrator's groups and votes) reads
its standings. Nothing else holds reputations. When that assessor is the reputation
engine, `build_reports` adds the members' trust-report exchange (node/reports.py): the
executor takes members' reports, and the node sends its own every
`[trust] report_interval_s`.

With `[trust] canaries` a federated node also mixes canaries into its calls to peers
(`build_canaries`, node/canary_traffic.py): the pool is loaded before anything else (a bad
pool stops the start with one line naming the file and the line), the scheduler's draws
are kept in trust.sqlite3, and the background loop stops with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import signal
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from a2a.server.agent_execution import AgentExecutor
from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT
from jwcrypto import jwk
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from consortium.errors import ConfigError, StorageUnavailable
from consortium.federation.roster import Roster
from consortium.federation.watcher import RosterWatcher
from consortium.learning.records import RoutingRecords
from consortium.llm.base import LLMBackend, ModelInfo
from consortium.llm.embeddings import DIMENSION as EMBEDDING_DIMENSION
from consortium.llm.load import ModelLoad
from consortium.llm.registry import PromptFormat, default_prompt_format
from consortium.llm.worker import ModelWorker
from consortium.logsafe import safe
from consortium.node.a2a.agent_card import build_agent_card
from consortium.node.a2a.conformance import ConformanceExecutor
from consortium.node.a2a.executor import ModelExecutor
from consortium.node.a2a.grpc_binding import grpc_server, serve_a2a
from consortium.node.a2a.http_binding import (
    MountedApi,
    bind_tcp,
    http_app,
    http_server,
    serve_http,
)
from consortium.node.a2a.request_handler import NodeRequestHandler
from consortium.node.admission import Admission
from consortium.node.audit import build_audit, run_checkpoints
from consortium.node.auth import (
    Caller,
    Credentials,
    http_credentials,
    key_caller,
    key_caller_async,
)
from consortium.node.canary_traffic import CanaryTraffic, EvidenceRecorder
from consortium.node.config import NodeConfig, RoutingSection
from consortium.node.learned import LazyEncoder, PolicyHolder
from consortium.node.limits import CallerLimits, LimitSettings
from consortium.node.offload import INLINE, Offload, offload_for
from consortium.node.openai import PREFIX as OPENAI_PREFIX
from consortium.node.openai import OpenAIApi, guard_refusal
from consortium.node.openai.catalogue import Catalogue
from consortium.node.orchestrator import Orchestrator, check_capabilities, check_groups
from consortium.node.peers import PeerClient
from consortium.node.periodic import every
from consortium.node.redaction import PolicyRedactor
from consortium.node.replicas import Replicas, new_replica_id
from consortium.node.reports import TrustReports
from consortium.node.retention import Step, audit_step, receipts_step, run_retention
from consortium.node.service import NodeService, ServiceSettings
from consortium.node.shared_limits import SharedLimits
from consortium.node.storage_health import StorageHealth, quiet_storage_tracebacks
from consortium.node.store import NodeTaskStore
from consortium.node.telemetry import (
    TRACER_NAME,
    LoadMetrics,
    make_exporter,
    make_meter_provider,
    make_provider,
)
from consortium.node.witnessing import Witnessing
from consortium.protocols.redaction import IdentityRedactor, Redactor
from consortium.redaction.policy import check_peers
from consortium.redaction.receipts import DisclosureStore
from consortium.sqlite import check_writable, storage_problem
from consortium.storage import migrations
from consortium.storage.storage import STORES, Storage
from consortium.trust.admission import MessageVerifier
from consortium.trust.api_keys import ApiKeys
from consortium.trust.audit import AuditLog, NoOpAuditLog
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.canaries import CanaryPool
from consortium.trust.canary_schedule import CanaryScheduler
from consortium.trust.files import secure_directory
from consortium.trust.keys import load_private_key, load_public_key, public_jwk
from consortium.trust.replay import ReplayCache
from consortium.trust.reputation import Assessor, NoOpAssessor
from consortium.trust.reputation_engine import ReputationAssessor
from consortium.trust.reputation_store import REFRESH_S, CanaryLogTable, ReputationStore
from consortium.trust.signing import Signer, SigningIdentity
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
    signer: Signer
    peers: PeerClient
    replay: ReplayCache
    # Reputations: what the exchange reports to and routing reads (the peers' assessor).
    assessor: Assessor
    # Closes what the node built for the assessor (its database, its metrics); a no-op
    # for an assessor handed in, which its owner closes.
    close_assessor: Callable[[], None]
    # Closes the redactor's detector thread and disclosure store (a no-op without one).
    close_redactor: Callable[[], None] = field(default=lambda: None)
    # The audit log the signer, the verifier and the node's parts record to, and the
    # SQLite log behind it (None with [audit] enabled = false).
    audit: AuditLog = field(default_factory=NoOpAuditLog)
    audit_log: SqliteAuditLog | None = None
    # The redactor's receipts (None without [redaction] enabled).
    disclosures: DisclosureStore | None = None
    # The MeterProvider built for the assessor (None without one): the node's metrics
    # share it (one exporter per metrics file).
    meter_provider: MeterProvider | None = None
    # Where signing and verifying run for async code (node/offload.py: inline on SQLite,
    # in the storage's threads on PostgreSQL).
    offload: Offload = INLINE


@dataclass(frozen=True)
class Routing:
    """The orchestrator and the state it keeps that the node reports and closes."""

    orchestrator: Orchestrator
    policy: PolicyHolder | None
    records: RoutingRecords | None


# -- the parts -------------------------------------------------------------------------


def build_store(cfg: NodeConfig, storage: Storage, replica: str = "") -> NodeTaskStore:
    """The task store (`storage`'s "tasks", saving as `replica`), repaired, with the tasks
    a previous run left unfinished failed (on PostgreSQL, other replicas' are theirs)."""
    store = NodeTaskStore(storage.database("tasks"), replica=replica)
    store.repair()
    store.fail_unfinished("the node stopped before the task finished")
    return store


def build_replicas(cfg: NodeConfig, storage: Storage, store: NodeTaskStore) -> Replicas | None:
    """On PostgreSQL: this replica, registered (before it serves any call), failing the
    tasks of replicas that die; None on SQLite (one process)."""
    if storage.kind != "postgresql":
        return None
    replicas = Replicas(
        storage.database("replicas"),
        store,
        replica=store.replica,
        org=cfg.node.org_id,
        failover_after_s=cfg.storage.failover_after_s,
    )
    replicas.beat()
    return replicas


def build_assessor(
    cfg: NodeConfig,
    *,
    members: Iterable[str] | None = None,
    meter_provider: MeterProvider | None = None,
    clock: Callable[[], float] | None = None,
    storage: Storage | None = None,
) -> ReputationAssessor | NoOpAssessor:
    """The node's reputations: a ReputationAssessor over the node's "trust" store
    (`storage`'s; without one, DATA_DIR/trust.sqlite3) in a federation with [trust]
    enabled, else the NoOpAssessor (every peer believed fully, nothing learned).
    `members`: the roster's other members; `meter_provider`: where its gauges and
    counters go. The caller closes it."""
    if cfg.federation is None or not cfg.trust.enabled:
        return NoOpAssessor()
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return ReputationAssessor(
        ReputationStore(cfg.trust_path if storage is None else storage.database("trust")),
        cfg.trust.settings(),
        members=members,
        meter_provider=meter_provider,
        **extra,
    )


def _nothing() -> None:
    pass


def check_trust_peers(cfg: NodeConfig, roster: Roster) -> None:
    """Every [trust.peers.ORG] names another member of the roster: ConfigError otherwise."""
    members = {m.org_id for m in roster.members}
    where = cfg.base_dir / "node.toml"
    for org in sorted(cfg.trust.peers):
        if org == cfg.node.org_id:
            raise ConfigError("names this node itself", path=str(where), key=f"trust.peers.{org}")
        if org not in members:
            raise ConfigError(
                f"{org} is not a member of federation {roster.federation_id}",
                path=str(where),
                key=f"trust.peers.{org}",
            )


def _warn_departed_trust_peers(cfg: NodeConfig, roster: Roster) -> None:
    """After a roster change: a [trust.peers] entry whose member left is kept (it would
    apply again if the member came back) and logged."""
    members = {m.org_id for m in roster.members}
    for org in sorted(set(cfg.trust.peers) - members):
        log.warning("trust.peers.%s: no longer a member of the federation; kept", safe(org))


def _owned_assessor(
    cfg: NodeConfig, watcher: RosterWatcher, storage: Storage | None = None
) -> tuple[Assessor, Callable[[], None], MeterProvider | None]:
    """build_assessor's, told the members now and after every roster change, with its
    metrics in DATA_DIR/metrics.jsonl when traces go to a file; how to close both; and
    its MeterProvider."""
    roster = watcher.current()
    me = cfg.node.org_id

    def others(r: Roster) -> list[str]:
        return [m.org_id for m in r.members if m.org_id != me]

    if not cfg.trust.enabled:  # no reputations: no metrics to export either
        return NoOpAssessor(), _nothing, None
    check_trust_peers(cfg, roster)
    watcher.subscribe(lambda r: _warn_departed_trust_peers(cfg, r))
    path = cfg.data_dir / "metrics.jsonl" if cfg.telemetry.exporter == "file" else None
    meters = make_meter_provider(me, roster.federation_id, path)
    assessor = build_assessor(cfg, members=others(roster), meter_provider=meters, storage=storage)
    watcher.subscribe(lambda r: assessor.set_members(others(r)))

    def close() -> None:
        assessor.close()
        meters.shutdown()

    return assessor, close, meters


def build_storage(cfg: NodeConfig) -> Storage:
    """The node's stores' databases ([storage] url), their schemas brought to this
    version's (`migrate = "auto"`) or checked (`"check"`). A database that cannot be
    reached raises StorageUnavailable; one a newer version migrated, SchemaTooNew."""
    storage = Storage(cfg.storage_location(), cfg.storage_settings())
    if storage.kind == "postgresql":
        left = sorted(
            {s.file for s in STORES.values() if s.file and (cfg.data_dir / s.file).exists()}
        )
        if left:
            log.warning(
                "%s holds SQLite state (%s) this node does not read: its state is at %s "
                "(`consortium db migrate --from sqlite:///%s --to ...` copies it there; "
                "move the files away once it has)",
                cfg.data_dir,
                ", ".join(left),
                storage.location.shown,
                cfg.data_dir,
            )
    try:
        if cfg.storage.migrate == "auto":
            done = migrations.upgrade(storage)
            if done:  # every first start does it: not worth a line at INFO
                log.debug(
                    "storage %s: schema of %s brought up to date",
                    storage.location.shown,
                    ", ".join(sorted(done)),
                )
        else:
            behind = migrations.pending(storage)
            if behind:
                raise ConfigError(
                    f"the schema of {', '.join(sorted(behind))} at {storage.location.shown} "
                    "is older than this version's: run `consortium db upgrade`",
                    key="storage.migrate",
                )
    except BaseException:
        storage.close()
        raise
    return storage


def build_federation(
    cfg: NodeConfig, assessor: Assessor | None = None, storage: Storage | None = None
) -> Federation | None:
    """Loads the roster (refusing an invalid one), the replay cache and the keys; the
    exchange reports to `assessor` (by default `build_assessor`'s)."""
    fed = cfg.federation
    if fed is None:
        return None
    if storage is None:
        storage = build_storage(cfg)
    admin = load_public_key(cfg.resolve(fed.admin_key))
    watcher = RosterWatcher(cfg.resolve(fed.roster), [admin])
    roster = watcher.current()
    close_assessor = _nothing
    meters: MeterProvider | None = None
    if assessor is None:
        assessor, close_assessor, meters = _owned_assessor(cfg, watcher, storage)
    replay = ReplayCache(storage.database("replay"))
    close_redactor = _nothing
    disclosures: DisclosureStore | None = None
    audit_log: SqliteAuditLog | None = None
    try:
        key = load_private_key(cfg.resolve(cfg.identity.private_key))
        signer = Signer(SigningIdentity(key, cfg.node.org_id, roster.federation_id))
        audit, audit_log = build_audit(
            cfg, watcher, lambda: signer.identity.key, storage.database("audit")
        )
        signer.audit = audit
        if isinstance(assessor, ReputationAssessor):
            assessor.audit = audit
        redactor, close_redactor, disclosures = build_redactor(cfg, watcher, audit, storage)
        verifier = MessageVerifier(
            org_id=cfg.node.org_id,
            roster=watcher.current,
            replay=replay,
            skew_s=fed.max_clock_skew_s,
            own_key=jwk.JWK(**public_jwk(key)),
            audit=audit,
        )
        peers = PeerClient(
            signer=signer,
            verifier=verifier,
            roster=watcher,
            timeout_s=fed.peer_timeout_s,
            redactor=redactor,
            assessor=assessor,
            credentials=cfg.client_credentials(),
            breaker=fed.breaker(),
            offload=offload_for(storage),
        )
    except BaseException:
        replay.close()
        close_assessor()
        close_redactor()
        if audit_log is not None:
            audit_log.close()
        raise
    log.info(
        "node %s joined federation %s (roster version %d, %d members)",
        cfg.node.org_id,
        roster.federation_id,
        roster.version,
        len(roster.members),
    )
    return Federation(
        watcher,
        verifier,
        signer,
        peers,
        replay,
        assessor,
        close_assessor,
        close_redactor,
        audit,
        audit_log,
        disclosures,
        meters,
        offload_for(storage),
    )


def build_redactor(
    cfg: NodeConfig,
    watcher: RosterWatcher,
    audit: AuditLog | None = None,
    storage: Storage | None = None,
) -> tuple[Redactor, Callable[[], None], DisclosureStore | None]:
    """node.toml's `[redaction]` policy over a detector built once, here, its closing and
    its receipts (in `storage`'s "redaction" store; without one, DATA_DIR's
    redaction.sqlite3); without it (the default) the identity redactor. Every
    [redaction.peers.ORG] must be a member; a detector that cannot load is a ConfigError
    (one line)."""
    policy = cfg.redaction
    if not policy.enabled:
        return IdentityRedactor(), _nothing, None
    where = str(cfg.base_dir / "node.toml")
    me = cfg.node.org_id
    check_peers(policy, {m.org_id: m.org_id == me for m in watcher.current().members}, path=where)
    from consortium.redaction.detector import Detector  # spaCy, Presidio: loaded here only

    try:
        detector = Detector(policy)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"the detector cannot load: {type(e).__name__}: {e}", path=where, key="redaction"
        ) from None
    store = DisclosureStore(
        cfg.redaction_path if storage is None else storage.database("redaction")
    )
    redactor = PolicyRedactor(policy, detector, watcher, store, audit or NoOpAuditLog())

    def close() -> None:
        redactor.close()
        store.close()

    log.info(
        "redaction on: default %s, %d per-type actions, %d peer and %d attribute overrides",
        policy.default,
        len(policy.actions),
        len(policy.peers),
        len(policy.rules),
    )
    return redactor, close, store


def retention_steps(cfg: NodeConfig, federation: Federation) -> list[Step]:
    """What the node prunes ([audit] retention_days / max_entries, [redaction]
    receipts_days); empty when nothing is to be forgotten."""
    steps: list[Step | None] = []
    if federation.audit_log is not None:
        steps.append(
            audit_step(federation.audit_log, cfg.audit.retention_days, cfg.audit.max_entries)
        )
    if federation.disclosures is not None:
        steps.append(receipts_step(federation.disclosures, cfg.redaction.receipts_days))
    return [s for s in steps if s is not None]


def build_canaries(
    cfg: NodeConfig, pool: CanaryPool | None, federation: Federation | None
) -> CanaryTraffic | None:
    """The canary traffic of `[trust] canaries` (`pool`, from `cfg.canary_pool()`), wired
    into the federation's peer client; None without a pool, or when the assessor records
    no evidence (a test's table of standings). The scheduler's draws go to the
    assessor's trust.sqlite3 when it has one."""
    if pool is None or federation is None:
        return None
    assessor = federation.assessor
    if not isinstance(assessor, EvidenceRecorder):
        log.warning("canaries configured, but this node's assessor records no evidence")
        return None
    table = CanaryLogTable(assessor.store) if isinstance(assessor, ReputationAssessor) else None
    # Unpredictable draws: a peer must not be able to replay the node's choices.
    scheduler = CanaryScheduler(pool, cfg.trust.canary_settings(), random.SystemRandom(), table)
    traffic = CanaryTraffic(
        scheduler, federation.peers, federation.roster, assessor, cfg.node.org_id
    )
    federation.peers.canaries = traffic
    log.info("canaries: %d in the pool, rate %g", len(pool), cfg.trust.canary_rate)
    return traffic


def build_prompt_format(cfg: NodeConfig, worker: ModelWorker) -> PromptFormat:
    """node.toml's prompt format, or for `auto` the one the loaded model suits."""
    fmt = cfg.model.prompt_format
    if fmt != "auto":
        return fmt
    return default_prompt_format(
        cfg.model.name, cfg.model.path or None, worker.backend_for_thread()
    )


def build_tracer_provider(cfg: NodeConfig, federation: Federation | None) -> TracerProvider:
    tel = cfg.telemetry
    return make_provider(
        cfg.node.org_id,
        federation.roster.current().federation_id if federation else "",
        make_exporter(tel.exporter, path=cfg.data_dir / tel.path, endpoint=tel.endpoint),
    )


async def build_routing(
    cfg: NodeConfig,
    worker: ModelWorker,
    federation: Federation | None,
    canaries: CanaryTraffic | None = None,
    storage: Storage | None = None,
) -> Routing:
    """Routing and groups as node.toml declares them ([routing], [groups.NAME]); the
    routing records in `storage`'s "records" store (without one, DATA_DIR/node.sqlite3).

    The sentence encoder (MiniLM, ~400 MB with torch) exists only when the configured
    router or its routing records need it, so no caller can make another node load it (a
    per-request learned route is then refused). A router that routes on embeddings loads
    it here, at start-up; routing records alone load it with the first question they
    embed (a node may never get a multiple-choice task)."""
    policy = None
    if cfg.routing.policy:
        keys = (
            [load_public_key(cfg.resolve(cfg.federation.admin_key))]
            if cfg.federation is not None
            else None
        )
        policy = PolicyHolder(
            cfg.resolve(cfg.routing.policy),
            keys,
            cfg.routing.threshold,
            cfg.routing.target,
            embedding_dim=EMBEDDING_DIMENSION,
            federation_id=federation.roster.current().federation_id if federation else None,
        )
    records = None
    if cfg.routing.record:
        records = RoutingRecords(
            cfg.database_path if storage is None else storage.database("records")
        )
    encoder = None
    if needs_encoder(cfg.routing):
        encoder = LazyEncoder()
        try:
            if routes_on_embeddings(cfg.routing):
                await encoder.load()
        except BaseException:
            if records is not None:
                records.close()
            raise
    orchestrator = Orchestrator(
        org_id=cfg.node.org_id,
        worker=worker,
        routing=cfg.routing,
        groups=dict(cfg.groups),
        peers=federation.peers if federation else None,
        learned=policy.router if policy is not None else None,
        embed=encoder.embed if encoder is not None else None,
        records=records,
        assessor=federation.assessor if federation else None,
        cross_check_rate=cfg.trust.cross_check_rate if cfg.trust.enabled else 0.0,
        alarm=canaries.scheduler.alarm if canaries is not None else None,
        audit=federation.audit if federation else None,
        failover_peers=cfg.federation.failover_peers if cfg.federation else 0,
    )
    if policy is not None and federation is not None:
        policy.audit = federation.audit
    return Routing(orchestrator, policy, records)


def build_service(
    cfg: NodeConfig,
    worker: ModelWorker,
    prompt_format: PromptFormat,
    routing: Routing,
    federation: Federation | None,
    tracer: trace.Tracer,
) -> NodeService:
    return NodeService(
        worker,
        ServiceSettings(
            org_id=cfg.node.org_id,
            prompt_format=prompt_format,
            system_prompt=cfg.model.system_prompt,
            max_tokens=cfg.model.max_tokens,
            temperature=cfg.model.temperature,
            stream_interval_s=cfg.server.stream_interval_s,
        ),
        peers=federation.peers if federation else None,
        tracer=tracer,
        orchestrator=routing.orchestrator,
    )


def build_reports(cfg: NodeConfig, federation: Federation | None) -> TrustReports | None:
    """The trust-report exchange, for a federated node whose assessor is the reputation
    engine (a node without reputations neither sends nor takes reports)."""
    if federation is None or not isinstance(federation.assessor, ReputationAssessor):
        return None
    assert cfg.federation is not None
    return TrustReports(
        org_id=cfg.node.org_id,
        roster=federation.roster,
        assessor=federation.assessor,
        peers=federation.peers,
        settings=cfg.trust.report_settings(),
        skew_s=cfg.federation.max_clock_skew_s,
    )


def build_witnessing(cfg: NodeConfig, federation: Federation | None) -> Witnessing | None:
    """Witnessing of audit-log checkpoints, for a federated node that keeps a log; a
    member's log misbehaving counts against it when the assessor records evidence."""
    if federation is None or federation.audit_log is None:
        return None
    roster = federation.roster.current()
    members = {m.org_id for m in roster.members}
    for org in cfg.audit.witnesses:
        if org == cfg.node.org_id or org not in members:
            raise ConfigError(
                f"{org} is not another member of federation {roster.federation_id}",
                path=str(cfg.base_dir / "node.toml"),
                key="audit.witnesses",
            )
    assessor = federation.assessor
    signer = federation.signer
    return Witnessing(
        org_id=cfg.node.org_id,
        federation_id=federation.roster.current().federation_id,
        audit=federation.audit_log,
        roster=federation.roster,
        peers=federation.peers,
        key=lambda: signer.identity.key,
        witnesses=cfg.audit.witnesses,
        interval_s=cfg.audit.witness_interval_s,
        evidence=assessor.record if isinstance(assessor, EvidenceRecorder) else None,
    )


def build_executor(
    cfg: NodeConfig,
    service: NodeService,
    federation: Federation | None,
    reports: TrustReports | None = None,
    witnessing: Witnessing | None = None,
) -> AgentExecutor:
    """The A2A executor over the service (behind the conformance kit's, if configured)."""
    executor: AgentExecutor = ModelExecutor(
        service,
        signer=federation.signer if federation else None,
        reports=reports,
        witnessing=witnessing,
        receipts=(
            federation.audit_log.receipt
            if federation is not None and federation.audit_log is not None and cfg.audit.receipts
            else None
        ),
        offload=federation.offload if federation is not None else INLINE,
    )
    if cfg.node.executor == "a2a-tck":
        executor = ConformanceExecutor(executor)
    return executor


def build_request_handler(
    cfg: NodeConfig,
    executor: AgentExecutor,
    store: NodeTaskStore,
    card: a2a_pb2.AgentCard,
    keys: ApiKeys,
    federation: Federation | None,
    tracer: trace.Tracer,
    limits: CallerLimits,
    admission: Admission | None = None,
    service: NodeService | None = None,
    storage: StorageHealth | None = None,
) -> NodeRequestHandler:
    return NodeRequestHandler(
        agent_executor=executor,
        task_store=store,
        agent_card=card,
        tracer=tracer,
        verifier=federation.verifier if federation else None,
        keys=keys,
        anonymous_loopback=cfg.auth.anonymous_loopback,
        member_cn=cfg.tls.member_cn if cfg.tls is not None else True,
        limits=limits,
        admission=admission,
        uses_local_model=service.uses_local_model if service is not None else None,
        org_id=cfg.node.org_id,
        require_writable=storage.require_writable if storage is not None else None,
        offload=federation.offload if federation is not None else INLINE,
    )


def build_limits(cfg: NodeConfig, storage: Storage | None = None) -> CallerLimits:
    """[limits]: the one per-caller limiter every API of the node consults; on
    PostgreSQL storage, its windows in the database the replicas share."""
    section = cfg.limits
    settings = LimitSettings(
        requests_per_minute=section.requests_per_minute,
        tokens_per_minute=section.tokens_per_minute,
        concurrent_requests=section.concurrent_requests,
    )
    if storage is not None and storage.kind == "postgresql":
        return SharedLimits(
            settings, storage.database("limits"), default_max_tokens=cfg.model.max_tokens
        )
    return CallerLimits(settings, default_max_tokens=cfg.model.max_tokens)


def build_worker(
    cfg: NodeConfig, backend_factory: Callable[[], LLMBackend], observer: LoadMetrics
) -> ModelWorker:
    """The model's worker with [model]'s queue bound, timeout and slot policy."""
    m = cfg.model
    return ModelWorker(
        backend_factory,
        label=cfg.node.org_id,
        max_queue=m.max_queue,
        queue_timeout_s=m.queue_timeout_s,
        caller_slots=m.caller_slots,
        peer_slots=m.peer_slots,
        observer=observer,
    )


def build_meters(cfg: NodeConfig, federation: Federation | None) -> tuple[MeterProvider, bool]:
    """The node's MeterProvider: the assessor's when it has one, else its own (metrics in
    DATA_DIR/metrics.jsonl when traces go to a file); and whether the node owns it (and
    shuts it down)."""
    if federation is not None and federation.meter_provider is not None:
        return federation.meter_provider, False
    path = cfg.data_dir / "metrics.jsonl" if cfg.telemetry.exporter == "file" else None
    federation_id = federation.roster.current().federation_id if federation is not None else ""
    return make_meter_provider(cfg.node.org_id, federation_id, path), True


def build_admission(cfg: NodeConfig, worker: ModelWorker) -> Admission:
    """The node's load shedding ([server] max_pending_requests, max_queue_wait_s)."""
    return Admission(
        worker,
        max_pending=cfg.server.max_pending_requests,
        max_wait_s=cfg.server.max_queue_wait_s,
    )


def build_openai_api(
    cfg: NodeConfig,
    service: NodeService,
    store: NodeTaskStore,
    keys: ApiKeys,
    worker: ModelWorker,
    federation: Federation | None,
    handler: NodeRequestHandler,
    limits: CallerLimits,
    admission: Admission | None = None,
    storage: StorageHealth | None = None,
) -> OpenAIApi:
    """The OpenAI-compatible API (/v1) over the service: the node's model, the router,
    the federation's members and the configured groups as models, the A2A handler's
    limits (one limiter for every API) and refusals."""
    roster = federation.roster if federation is not None else None
    catalogue = Catalogue(
        cfg.node.org_id,
        lambda: worker.info.name,
        members=(lambda: roster.current().members) if roster is not None else None,
        groups=sorted(cfg.groups),
        quarantined=service.orchestrator.quarantined,
        group_runs=service.orchestrator.group_runs,
    )
    return OpenAIApi(
        service,
        store,
        keys,
        catalogue,
        limits,
        anonymous_loopback=cfg.auth.anonymous_loopback,
        refused=lambda reason, what: handler.count_refusal(reason, what),
        tracer=handler.tracer,
        admission=admission,
        require_writable=storage.require_writable if storage is not None else None,
    )


def build_card(
    cfg: NodeConfig, info: ModelInfo, endpoints: Endpoints, federation: Federation | None
) -> a2a_pb2.AgentCard:
    return build_agent_card(
        org_id=cfg.node.org_id,
        display_name=cfg.node.display_name,
        description=cfg.node.description,
        grpc_url=endpoints.grpc_target,
        http_url=endpoints.http_url,
        model_name=info.name,
        model_backend=info.backend,
        context_size=info.context_size,
        public_keys=public_keys(cfg),
        federation_id=federation.roster.current().federation_id if federation else "",
        mutual_tls=cfg.tls is not None and cfg.tls.client_auth,
    )


def public_keys(cfg: NodeConfig) -> list[dict[str, Any]]:
    """The organization's public key for the agent card, if the node has one."""
    path = cfg.resolve(cfg.identity.public_key)
    if not path.exists():
        log.warning("no public key at %s: the agent card carries no signing key", path)
        return []
    return [public_jwk(load_public_key(path))]


def grpc_credentials(cfg: NodeConfig) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port (requiring client certificates under mutual TLS), if any."""
    t = cfg.tls
    if t is None:
        return None
    return server_credentials(
        cfg.resolve(t.cert), cfg.resolve(t.key), cfg.resolve(t.ca) if t.client_auth else None
    )


def http_tls(cfg: NodeConfig) -> dict[str, Any]:
    """uvicorn's TLS options: the HTTP port serves TLS whenever gRPC does, and requires
    client certificates under mutual TLS, so it never bypasses what gRPC enforces."""
    t = cfg.tls
    if t is None:
        return {}
    return server_ssl_options(
        cfg.resolve(t.cert), cfg.resolve(t.key), cfg.resolve(t.ca) if t.client_auth else None
    )


# -- the node --------------------------------------------------------------------------


class Node:
    """Runs one node until stopped. `start()` returns once both endpoints accept calls.

    `assessor` replaces the reputations `build_assessor` would make from the config (a
    test's table of standings, or an engine built elsewhere); a node without
    [federation] has no peers and ignores it."""

    def __init__(
        self,
        config: NodeConfig,
        backend_factory: Callable[[], LLMBackend],
        *,
        assessor: Assessor | None = None,
    ) -> None:
        self.config = config
        self._assessor = assessor
        # The model's load as metrics, once the node's MeterProvider exists (`_start`).
        self.load_metrics = LoadMetrics()
        self.worker = build_worker(config, backend_factory, self.load_metrics)
        self.meter_provider: MeterProvider | None = None
        self._owns_meters = False
        self.store: NodeTaskStore | None = None
        self.handler: NodeRequestHandler | None = None
        self.admission: Admission | None = None
        self.openai: OpenAIApi | None = None
        self.limits: CallerLimits | None = None
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
        self.policy: PolicyHolder | None = None
        self.records: RoutingRecords | None = None
        self.keys: ApiKeys | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._limits_alive: asyncio.Task[None] | None = None
        self.canaries: CanaryTraffic | None = None
        self.reports: TrustReports | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self.witnessing: Witnessing | None = None
        self._witnessing: asyncio.Task[None] | None = None
        self.storage = StorageHealth(config.data_dir)
        # The stores' databases ([storage] url), opened by `_start`.
        self.databases: Storage | None = None
        # This process among the organization's replicas (recorded with its tasks), and
        # its heartbeat (PostgreSQL only).
        self.replica_id = new_replica_id()
        self.replicas: Replicas | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._trust_refresh: asyncio.Task[None] | None = None

    async def start(self) -> Endpoints:
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> Endpoints:
        cfg = self.config
        # A full or read-only data directory: one line (StorageUnavailable), no traceback.
        check_writable(cfg.data_dir)
        quiet_storage_tracebacks()
        secure_directory(cfg.data_dir)
        self.databases = build_storage(cfg)
        self.storage.watch(self.databases)
        self.store = build_store(cfg, self.databases, self.replica_id)
        self.replicas = build_replicas(cfg, self.databases, self.store)
        self.keys = ApiKeys(self.databases.database("api_keys"))
        self._housekeeping = asyncio.create_task(self._expire_tasks())
        # Before loading the model: fail fast.
        pool = cfg.canary_pool()
        self.federation = build_federation(cfg, self._assessor, self.databases)
        federation = self.federation
        self.meter_provider, self._owns_meters = build_meters(cfg, federation)
        self.load_metrics.bind(self.meter_provider, self.worker.load)
        self.canaries = build_canaries(cfg, pool, federation)
        check_groups(cfg.groups, cfg.node.org_id, federation is not None)
        info = await self.worker.start()
        # What the configured routing needs from the model, against what it can do.
        check_capabilities(info, cfg.routing, cfg.groups, cfg.node.org_id)
        prompt_format = build_prompt_format(cfg, self.worker)
        address = f"{cfg.server.host}:{cfg.server.grpc_port}"
        limit = cfg.server.max_message_bytes
        self._grpc, grpc_port = grpc_server(address, limit, grpc_credentials(cfg))
        http_sock = bind_tcp(cfg.server.host, cfg.server.http_port)
        self.endpoints = endpoints = _endpoints(cfg, grpc_port, http_sock.getsockname()[1])
        self.card = build_card(cfg, info, endpoints, federation)
        self.tracer_provider = build_tracer_provider(cfg, federation)
        self.tracer = self.tracer_provider.get_tracer(TRACER_NAME)
        if federation is not None:
            federation.peers.tracer = self.tracer
        routing = await build_routing(cfg, self.worker, federation, self.canaries, self.databases)
        self.policy, self.records = routing.policy, routing.records
        self.service = build_service(
            cfg, self.worker, prompt_format, routing, federation, self.tracer
        )
        self.reports = build_reports(cfg, federation)
        self.witnessing = build_witnessing(cfg, federation)
        executor = build_executor(cfg, self.service, federation, self.reports, self.witnessing)
        self.limits = build_limits(cfg, self.databases)
        if isinstance(self.limits, SharedLimits):
            self._limits_alive = asyncio.create_task(self.limits.keep_alive())
        self.admission = build_admission(cfg, self.worker)
        self.handler = build_request_handler(
            cfg,
            executor,
            self.store,
            self.card,
            self.keys,
            federation,
            self.tracer,
            self.limits,
            self.admission,
            self.service,
            self.storage,
        )
        serve_a2a(self._grpc, self.handler)
        await self._grpc.start()
        self.openai = build_openai_api(
            cfg,
            self.service,
            self.store,
            self.keys,
            self.worker,
            federation,
            self.handler,
            self.limits,
            self.admission,
            self.storage,
        )
        app = http_app(
            self.card,
            self.handler,
            card_max_age_s=cfg.server.agent_card_max_age_s,
            max_message_bytes=limit,
            healthz=self._healthz,
            apis=[MountedApi(OPENAI_PREFIX, self.openai.routes(), guard_refusal)],
            card_modifier=self._with_replicas,
        )
        self._http = http_server(
            app,
            grace_s=cfg.server.shutdown_grace_s,
            tls=http_tls(cfg),
            keep_alive_s=cfg.server.keep_alive_s,
        )
        self._http_task = await serve_http(self._http, http_sock)
        endpoints_file(cfg).write_text(json.dumps(dataclasses.asdict(endpoints)) + "\n")
        if self.replicas is not None:
            self.replicas.endpoints = {
                "interfaces": [[i.protocol_binding, i.url] for i in self.card.supported_interfaces]
            }
            self._heartbeat = asyncio.create_task(self.replicas.run(cfg.storage.heartbeat_s))
        if self.canaries is not None:
            self.canaries.start()
        if self.reports is not None:
            self._reporting = asyncio.create_task(self.reports.run())
        if federation is not None and federation.audit_log is not None:
            self._checkpointing = asyncio.create_task(
                run_checkpoints(federation.audit_log, cfg.audit.checkpoint_interval_s)
            )
        if self.witnessing is not None:
            self._witnessing = asyncio.create_task(self.witnessing.run())
        if federation is not None:
            steps = retention_steps(cfg, federation)
            self._retention = asyncio.create_task(run_retention(steps, RETENTION_INTERVAL_S))
            assessor = federation.assessor
            if isinstance(assessor, ReputationAssessor) and assessor.store.remote:
                # Other replicas' evidence, read off the event loop before the records
                # are old enough for a reader to reread them inline (trust store).
                self._trust_refresh = asyncio.create_task(
                    every(REFRESH_S / 2, lambda: assessor.off_loop(assessor.refresh), "trust")
                )
        log.info(
            "node %s ready: model %s (%s), gRPC %s, HTTP %s",
            cfg.node.org_id,
            info.name,
            info.backend,
            endpoints.grpc_target,
            endpoints.http_url,
        )
        return endpoints

    async def _expire_tasks(self) -> None:
        """Deletes finished tasks past `server.task_retention_days`: now, then hourly."""
        days = self.config.server.task_retention_days
        if days <= 0:
            return
        while self.store is not None:
            try:
                n = await asyncio.to_thread(self.store.delete_expired, days)
            except StorageUnavailable:
                pass  # logged once per interval where it was met
            except sqlite3.Error as e:
                log.error("task retention: %s", e)
            else:
                if n:
                    log.info("deleted %d task(s) older than %g days", n, days)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    async def _with_replicas(self, card: a2a_pb2.AgentCard) -> a2a_pb2.AgentCard:
        """The agent card as served: this replica's interfaces, then every other live
        replica's (A2A `supportedInterfaces`, in order of preference), so that clients
        and peers that cannot reach one replica go to another (node/failover.py)."""
        replicas = self.replicas
        if replicas is None or not replicas.others:
            return card
        served = a2a_pb2.AgentCard()
        served.CopyFrom(card)
        known = {(i.protocol_binding, i.url) for i in card.supported_interfaces}
        for replica in replicas.others:
            for pair in replica.endpoints.get("interfaces", []):
                if not (isinstance(pair, list) and len(pair) == 2):
                    continue
                binding, url = str(pair[0]), str(pair[1])
                if (binding, url) not in known:
                    known.add((binding, url))
                    served.supported_interfaces.append(
                        a2a_pb2.AgentInterface(
                            url=url,
                            protocol_binding=binding,
                            protocol_version=PROTOCOL_VERSION_CURRENT,
                        )
                    )
        return served

    def reload_roster(self) -> None:
        """Checks federation.toml now instead of on the next message (SIGHUP): a changed
        file is verified and taken, or refused with the roster in force kept (the watcher
        logs which); then logs the version in force."""
        if self.federation is None:
            log.info("reload: no roster loaded (not started, or in no federation)")
            return
        watcher = self.federation.roster
        roster = watcher.check_now()
        log.info(
            "reload: roster version %d in force (%d reloaded, %d refused since start)",
            roster.version,
            watcher.reloads,
            watcher.refused,
        )

    async def _healthz(self, request: Request) -> Response:
        storage = await self.storage.check()
        creds = http_credentials(request)
        caller = None
        if creds.authorization:
            with contextlib.suppress(StorageUnavailable):  # then no details: the body says why
                caller = await key_caller_async(creds.authorization, self.keys)
        # Its details read stores (records, the audit log): off the loop on PostgreSQL.
        body = await offload_for(self.databases)(lambda: self.health(creds, storage, caller))
        return JSONResponse(body, status_code=503 if storage is not None else 200)

    def health(
        self,
        creds: Credentials,
        storage: dict[str, Any] | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Liveness for anyone: "ok", or "degraded" when the node cannot write (`storage`,
        from StorageHealth.check: its problem); details (counters, the model's load,
        roster, policy, which databases fail since when) only for a caller on loopback or
        holding an admin API key (`caller`, if its key was already looked up)."""
        cfg = self.config
        body: dict[str, Any] = {"status": "ok"}
        if storage is not None:
            body["status"] = "degraded"
            body["storage"] = {"writable": False, "problem": storage["problem"]}
        if caller is None and creds.authorization:
            with contextlib.suppress(StorageUnavailable):
                caller = key_caller(creds.authorization, self.keys)
        if not (creds.loopback or (caller is not None and caller.admin)):
            return body
        body["storage"] = {"writable": True} if storage is None else {"writable": False, **storage}
        body.update({"org_id": cfg.node.org_id, "model": self.worker.info.name})
        if self.handler is not None:
            body["refusals"] = dict(self.handler.refusals)
        if self.admission is not None:
            body["load"] = self.admission.counts()
        body["model_load"] = model_load(self.worker.load())
        if self.federation is not None:
            roster = self.federation.roster
            body["federation"] = {
                "id": roster.current().federation_id,
                "roster_version": roster.current().version,
                "roster_reloads": roster.reloads,
                "rosters_refused": roster.refused,
                "messages_refused": dict(self.handler.refusals) if self.handler else {},
                "peers": self._peers_seen(),
            }
        if self.reports is not None:
            body["trust_reports"] = self.reports.counts()
        if self.federation is not None and self.federation.audit_log is not None:
            audit_log = self.federation.audit_log
            # A database that cannot be read leaves these details out: `storage` says why.
            with contextlib.suppress(StorageUnavailable):
                latest = audit_log.latest()
                body["audit"] = {
                    "entries": audit_log.size,
                    "latest_checkpoint": latest.checkpoint.size if latest is not None else 0,
                    "witnessed_size": audit_log.witnessed_size(cfg.audit.witnessed_by),
                    **(self.witnessing.counts() if self.witnessing is not None else {}),
                }
        if self.records is not None:
            with contextlib.suppress(StorageUnavailable):
                body["routing_records"] = self.records.counts()
        if self.policy is not None:
            body["routing_policy"] = {
                "loaded": self.policy.loaded,
                "refused": self.policy.refused,
                "version": self.policy.version,
            }
        return body

    def _peers_seen(self) -> dict[str, dict[str, str]]:
        """Each other member of the roster this node holds: its roster status, its trust
        state here and its circuit (what `consortium status` shows)."""
        assert self.federation is not None
        me = self.config.node.org_id
        peers = self.federation.peers
        return {
            m.org_id: {
                "status": m.status,
                "trust": self.federation.assessor.standing(m.org_id).state,
                "circuit": peers.breaker(m.org_id).state,
            }
            for m in self.federation.roster.current().members
            if m.org_id != me
        }

    async def stop(self) -> None:
        """Stops accepting calls, lets in-flight tasks finish within the grace period,
        marks the rest failed, has the last checkpoint cosigned by the witnesses (a few
        seconds at most), and closes the model and the database."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.shutdown_grace_s
        for background in (
            self._housekeeping,
            self._limits_alive,
            self._reporting,
            self._checkpointing,
            self._witnessing,
            self._retention,
            self._trust_refresh,
        ):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if self.canaries is not None:
            await self.canaries.close()
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
        if self.witnessing is not None:
            await self.witnessing.submit_last()  # the log's tail, witnessed before exit
        await self.worker.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the exporter
        if self.meter_provider is not None and self._owns_meters:
            self.meter_provider.shutdown()  # exports once more
        if self.federation is not None:
            await self.federation.peers.close()
            self.federation.replay.close()
            self.federation.close_assessor()
            self.federation.close_redactor()
            if self.federation.audit_log is not None:
                # Signs a last checkpoint; the next start signs it when the disk cannot.
                _despite_storage(self.federation.audit_log.close, "the last audit checkpoint")
        if self.records is not None:
            self.records.close()
        if self.keys is not None:
            self.keys.close()
        if isinstance(self.limits, SharedLimits):
            await asyncio.to_thread(self.limits.close)
        # Beating until now: no survivor fails the tasks finishing within the grace period.
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if (store := self.store) is not None:
            _despite_storage(
                lambda: store.fail_unfinished("the node shut down before the task finished"),
                "marking unfinished tasks failed (done at the next start)",
            )
            store.close()
        if (replicas := self.replicas) is not None:
            _despite_storage(replicas.leave, "leaving the replicas (declared dead later)")
        if self.databases is not None:
            self.databases.close()
        if self.store is not None:  # files were made: keep them the organization's
            _despite_storage(lambda: secure_directory(self.config.data_dir), "securing data")
        if self.endpoints is not None:
            endpoints_file(self.config).unlink(missing_ok=True)
            log.info("node %s stopped", self.config.node.org_id)


def model_load(load: ModelLoad) -> dict[str, Any]:
    """The model's load as /healthz shows it: the snapshot's fields, the mean batch per
    decode step and the prefix-cache hit rate."""
    return {
        **dataclasses.asdict(load),
        "mean_batch": round(load.mean_batch, 3),
        "prefix_hit_rate": round(load.prefix_hit_rate, 4),
    }


def _despite_storage(step: Callable[[], object], what: str) -> None:
    """Runs one step of stopping; a disk that cannot be written skips it with one line,
    and the node still stops."""
    try:
        step()
    except StorageUnavailable as e:
        log.warning("%s skipped: %s", what, e)
    except OSError as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        log.warning("%s skipped: %s", what, StorageUnavailable(problem))


def _endpoints(cfg: NodeConfig, grpc_port: int, http_port: int) -> Endpoints:
    host = cfg.advertised_host
    return Endpoints(
        grpc_port, http_port, f"{host}:{grpc_port}", f"{cfg.http_scheme}://{host}:{http_port}"
    )


def needs_encoder(routing: RoutingSection) -> bool:
    """The learned router embeds each question; so do routing records, which every router
    but `local` keeps (unless `record = false`)."""
    router = routing.router.split(":")[0]
    return bool(routing.policy) or router == "learned" or (routing.record and router != "local")


def routes_on_embeddings(routing: RoutingSection) -> bool:
    """The learned router (or a policy) embeds every question it routes."""
    return bool(routing.policy) or routing.router.split(":")[0] == "learned"


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


async def serve_until_signalled(node: Node) -> None:
    """Starts `node`, prints the READY line a supervisor waits for (the bound ports), and
    serves until SIGTERM or SIGINT; then stops it. SIGHUP re-reads the roster now (what
    the systemd unit's ExecReload sends). What `consortium node start` runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload_roster)
    try:
        await node.start()
        ep = node.endpoints
        assert ep is not None
        print(f"READY grpc={ep.grpc_target} http={ep.http_url}", flush=True)
        await stop.wait()
    finally:
        await node.stop()
