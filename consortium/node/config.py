"""node.toml: one organization's node configuration, validated with pydantic.

Every field has a default or a clear "required" error. Relative paths are relative to
the directory of the config file. Secrets are file paths, never inline values.
A bad file raises ConfigError naming the file, the key and what is wrong.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from consortium.errors import ConfigError
from consortium.federation.roster import ORG_ID
from consortium.llm.settings import ModelSection
from consortium.node.breaker import BreakerSettings
from consortium.redaction.policy import RedactionPolicy, check_policy
from consortium.storage.storage import PoolSettings
from consortium.storage.url import Location, parse_location
from consortium.trust.canaries import CanaryPool, load_pool
from consortium.trust.canary_schedule import CanarySettings
from consortium.trust.reports import ReportSettings
from consortium.trust.reputation_engine import ReputationSettings

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

ORG_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    org_id: Annotated[str, Field(pattern=ORG_ID_PATTERN)]
    display_name: str = ""
    description: str = "A Consortium node"
    data_dir: str = "data"
    # "a2a-tck": answer the A2A conformance kit's scenario messages (testing aid).
    executor: Literal["model", "a2a-tck"] = "model"


class ServerSection(_Section):
    host: str = "127.0.0.1"
    # The host other organizations use to reach this node (agent card URLs).
    public_host: str = ""
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 50051
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_message_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Seconds in-flight tasks get to finish on shutdown before they are marked failed.
    shutdown_grace_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    # Cache-Control max-age of the agent card.
    agent_card_max_age_s: Annotated[int, Field(ge=0, le=86400)] = 300
    # Streamed tokens are coalesced into one artifact update per interval (0: every token).
    # 50 ms keeps streaming smooth and the node's overhead under 5 % (README, benchmarks).
    stream_interval_s: Annotated[float, Field(ge=0, le=5)] = 0.05
    # Finished tasks older than this are deleted (checked at start and hourly); 0 keeps all.
    task_retention_days: Annotated[float, Field(ge=0, le=36500)] = 30.0
    # Load shedding (node/admission.py; 0 turns a bound off). Requests for work (A2A tasks
    # and scorings, /v1 completions) in flight at once; more are refused at once (429 /
    # RESOURCE_EXHAUSTED) rather than queued.
    max_pending_requests: Annotated[int, Field(ge=0, le=1_000_000)] = 128
    # A request for the node's own model is refused when its estimated wait for the model
    # (the requests ahead of it times the model's recent time per request) exceeds this.
    max_queue_wait_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Seconds an idle HTTP keep-alive connection stays open: longer than clients' own idle
    # expiry, so that a client never sends on a connection the node is closing.
    keep_alive_s: Annotated[float, Field(ge=1, le=3600)] = 75.0


class IdentitySection(_Section):
    private_key: str = "keys/private.jwk"
    public_key: str = "keys/public.jwk"


class FederationSection(_Section):
    """Membership of a federation: the signed roster and the admin key that signs it."""

    roster: str
    admin_key: str
    max_clock_skew_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    peer_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # A router's escalation that fails to reach its peer (refused, reset, timed out,
    # busy) before any of its answer was shown is retried on up to this many other
    # capable peers, within the task's deadline (README "Routing").
    failover_peers: Annotated[int, Field(ge=0, le=16)] = 2
    # The circuit breaker per peer (node/breaker.py): open after this many connection
    # failures in a row (a timeout opens it at once), probed after breaker_open_s,
    # doubling up to breaker_max_open_s; a probe waits breaker_probe_timeout_s.
    breaker_failures: Annotated[int, Field(ge=1, le=100)] = 2
    breaker_open_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    breaker_max_open_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    breaker_probe_timeout_s: Annotated[float, Field(gt=0, le=600)] = 2.0

    def breaker(self) -> BreakerSettings:
        return BreakerSettings(
            failures=self.breaker_failures,
            open_s=self.breaker_open_s,
            max_open_s=max(self.breaker_max_open_s, self.breaker_open_s),
            probe_timeout_s=self.breaker_probe_timeout_s,
        )


class TlsSection(_Section):
    """TLS on the gRPC endpoint and for calls to peers; mutual TLS with client_auth."""

    cert: str
    key: str
    # CA that signed the peers' certificates (verifies servers we call, and clients
    # calling us when client_auth is on).
    ca: str
    client_auth: bool = False
    # With client_auth: a member calling with a signature must present a certificate whose
    # common name is its organization id (what `consortium init --mtls` issues). Turn off
    # for a PKI whose certificates name hosts rather than organizations.
    member_cn: bool = True


class AuthSection(_Section):
    """Who may call this node besides federation members (who sign their requests)."""

    # Callers from the loopback interface without credentials share one "anonymous"
    # scope of their own. `consortium init` turns this on for a node bound to loopback.
    anonymous_loopback: bool = False


class StorageSection(_Section):
    """Where the node keeps its state (consortium/storage): SQLite files in its data
    directory (default), or one PostgreSQL database every replica of the organization's
    node shares. The password never goes here: `password_file` (0600) or libpq's own
    PGPASSWORD / ~/.pgpass."""

    url: Annotated[str, Field(max_length=2048)] = ""
    password_file: str = ""
    # PostgreSQL: connections per replica, and how long a call waits for the database
    # before it fails with 503 / UNAVAILABLE.
    pool_size: Annotated[int, Field(ge=1, le=256)] = 8
    max_overflow: Annotated[int, Field(ge=0, le=256)] = 8
    pool_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    connect_timeout_s: Annotated[float, Field(ge=1, le=300)] = 5.0
    statement_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # "auto": the schema is brought to this version's at start (replicas take turns);
    # "check": start is refused unless `consortium db upgrade` already did.
    migrate: Literal["auto", "check"] = "auto"
    # PostgreSQL, several replicas: each records that it is alive every `heartbeat_s`; one
    # not seen for `failover_after_s` is declared dead by a survivor, which fails the
    # tasks it was running (consortium/node/replicas.py).
    heartbeat_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    failover_after_s: Annotated[float, Field(gt=0, le=3600)] = 10.0

    @model_validator(mode="after")
    def _failover_after_beats(self) -> StorageSection:
        if self.failover_after_s <= 2 * self.heartbeat_s:
            raise ValueError(
                f"failover_after_s ({self.failover_after_s:g}) must exceed two heartbeats "
                f"(heartbeat_s {self.heartbeat_s:g}): a live replica would be declared dead"
            )
        return self


class LimitsSection(_Section):
    """Per-caller limits on every API (A2A over gRPC and JSON-RPC, /v1), per API key, over
    a rolling minute (node/limits.py says what counts, and when); 0: unlimited."""

    # Calls of every A2A method and /v1 route.
    requests_per_minute: Annotated[int, Field(ge=0, le=1_000_000)] = 600
    # Tokens of the caller's tasks: reserved at admission (prompt + max_tokens), settled
    # to what they used when they end.
    tokens_per_minute: Annotated[int, Field(ge=0, le=1_000_000_000)] = 200_000
    # Tasks of the caller's in progress at once (answers being made).
    concurrent_requests: Annotated[int, Field(ge=0, le=100_000)] = 16


class OpenAISection(_Section):
    """The OpenAI-compatible API on the HTTP port (/v1). Its limits are the caller's, in
    [limits]; `requests_per_minute` and `tokens_per_minute` here are still accepted (with
    a warning) and mean the same as there."""


# Keys of [openai] that moved to [limits]; still accepted.
MOVED_TO_LIMITS = ("requests_per_minute", "tokens_per_minute")


def _moved_limits(data: Any) -> Any:
    """[openai]'s old limit keys, moved to [limits] (refused when both name one)."""
    if not isinstance(data, dict) or not isinstance(data.get("openai"), dict):
        return data
    openai = dict(data["openai"])
    moved = {k: openai.pop(k) for k in MOVED_TO_LIMITS if k in openai}
    if not moved:
        return data
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        return data  # the section's own error names it
    both = sorted(set(moved) & set(limits))
    if both:
        raise ValueError(
            f"openai.{both[0]} and limits.{both[0]} are both set: keep limits.{both[0]} only"
        )
    log.warning(
        "[openai] %s: these limits moved to [limits] (every API's); accepted as such",
        ", ".join(sorted(moved)),
    )
    return {**data, "openai": openai, "limits": {**limits, **moved}}


class TelemetrySection(_Section):
    """OpenTelemetry traces: OTLP JSON lines in a file (default), or OTLP to a collector."""

    exporter: Literal["file", "otlp-grpc", "otlp-http", "none"] = "file"
    # For "file": relative to node.data_dir.
    path: str = "traces.jsonl"
    endpoint: str = ""


class AuditSection(_Section):
    """The tamper-evident audit log of a node in a federation (DATA_DIR/audit.sqlite3):
    every message exchanged with another organization, every admission refusal, every
    routing decision, trust state change and roster version, as leaves of a Merkle tree
    with signed checkpoints."""

    enabled: bool = True
    # A signed checkpoint every this many entries, and after this many seconds with new
    # entries.
    checkpoint_every: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    checkpoint_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    # "crash": every entry survives a crash of the process (SIGKILL included);
    # "power": also a power cut (an fsync per entry).
    durable_against: Literal["crash", "power"] = "crash"
    # How many other members must cosign a checkpoint for it to count as witnessed
    # (`consortium audit verify` fails a log no checkpoint of which has that many).
    witnessed_by: Annotated[int, Field(ge=0, le=1000)] = 0
    # The members asked to cosign this node's checkpoints (empty: every other active
    # member), and how often (0: never; members' checkpoints are still witnessed).
    witnesses: list[Annotated[str, Field(pattern=ORG_ID_PATTERN)]] = Field(default_factory=list)
    witness_interval_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    # Replies to members carry the inclusion proof of this node's entry of their request
    # (off by default: a checkpoint signed per reply and ~1.5 KB more per answer; see
    # benchmarks/audit.py).
    receipts: bool = False
    # Retention: the bodies of entries older than this many days, and of all but the
    # newest `max_entries`, are dropped (0: kept); their leaf hashes stay, so the tree,
    # its checkpoints and witnesses' records still verify (README, "Audit log").
    retention_days: Annotated[float, Field(ge=0, le=36500)] = 0.0
    max_entries: Annotated[int, Field(ge=0)] = 0


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class RoutingSection(_Section):
    """How this node answers: locally, escalated to a peer, or by a group of members."""

    # local | always:ORG | always:GROUP | random:P | heuristic | self[:SIGNAL] | learned |
    # cascade[:confidence]
    router: str = "local"
    # Escalate when the router's score exceeds this (per router: see the README).
    threshold: float = 0.0
    # Where to escalate: an organization or a group name; "" lets the node choose a peer
    # by capability, price and latency within the budget.
    target: str = ""
    # The learned router's policy artifact (signed by the federation admin key).
    policy: str = ""
    max_cost: Annotated[float, Field(ge=0)] | None = None
    deadline_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    max_peers: Annotated[int, Field(ge=0, le=64)] | None = None
    # Keep a routing record (the learned router's features, the decision, the outcome
    # once known) of each routed multiple-choice task, for federated training. Costs a
    # short generated draft and a sentence embedding per task when the router itself
    # does not need them.
    record: bool = True

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        from consortium.protocols.routing import parse_node_router

        parse_node_router(v)
        return v


class GroupSection(_Section):
    """A horizontal group: several members answer one multiple-choice task together."""

    protocol: Literal["vote", "debate", "mixture"] = "vote"
    # Organization ids; "self" is this node's own model.
    members: Annotated[list[str], Field(min_length=1, max_length=16)]
    rounds: Annotated[int, Field(ge=1, le=5)] = 2
    topology: Literal["full", "ring", "star"] = "full"
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # mixture: the member that answers last, shown the others' proposals.
    aggregator: str = ""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # The fewest members the trust layer must allow (not quarantined) for the group to
    # run; with fewer (or a quarantined aggregator), `on_short` decides: answer with the
    # local model ("local") or refuse the task ("refuse").
    min_members: Annotated[int, Field(ge=1, le=16)] = 1
    on_short: Literal["local", "refuse"] = "local"
    # When members fail during a round (unreachable, a refusal, an answer that fails
    # verification), the group answers without them if at least this many members
    # answered; else the task fails, naming each failure. Default: a majority of
    # `members`.
    quorum: Annotated[int, Field(ge=1, le=16)] | None = None

    @model_validator(mode="after")
    def _min_members(self) -> GroupSection:
        if self.min_members > len(self.members):
            raise ValueError(
                f"min_members {self.min_members} exceeds the group's {len(self.members)} members"
            )
        if self.quorum is not None and self.quorum > len(self.members):
            raise ValueError(
                f"quorum {self.quorum} exceeds the group's {len(self.members)} members"
            )
        return self

    @property
    def answers_needed(self) -> int:
        """The quorum: as configured, else a majority of the members."""
        return self.quorum if self.quorum is not None else len(self.members) // 2 + 1


class TrainingSection(_Section):
    """This organization's Flower SuperNode (`consortium federation supernode`)."""

    # The coordinator's SuperLink, host:port.
    superlink: str = ""
    # The SuperNode's own local API port (each SuperNode on a host needs its own).
    port: Annotated[int, Field(ge=1, le=65535)] = 9094
    # CA certificate that signed the SuperLink's TLS certificate; "" with insecure = true
    # for a loopback test only.
    ca: str = ""
    insecure: bool = False
    # The SuperNode's authentication key (OpenSSH EC private key, mode 0600), when the
    # SuperLink runs with --enable-supernode-auth; its .pub is what the coordinator registers.
    auth_key: str = ""


_TRUST = ReputationSettings()
_CANARY = CanarySettings()
# The [trust] keys of the canary schedule (trust/canary_schedule.py), not of reputations.
CANARY_KEYS = frozenset(
    {
        "canaries",
        "canary_rate",
        "canary_background_interval_s",
        "canary_budget_tokens",
        "canary_budget_period_s",
        "canary_repeat_window_s",
    }
)
_REPORTS = ReportSettings()
_REPORT_KEYS = frozenset(ReportSettings.__dataclass_fields__)
_Weight = Annotated[float, Field(ge=0, le=10)]
_Bound = Annotated[float, Field(gt=0, lt=1)]


class TrustPeerSection(_Section):
    """[trust.peers.ORG]: what this node does differently for one member."""

    # Its share of real calls that also carry a canary (default: [trust] canary_rate).
    canary_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    # Scored and weighed like any peer but never quarantined (probation at worst, the
    # reason says so): for a partner the organization cannot do without.
    exempt: bool = False


class TrustSection(_Section):
    """Peers' reputations (trust/reputation_engine.py): a Beta posterior per peer with
    forgetting; states decided on its lower credible bound. Without [federation] there
    are no peers and nothing is kept."""

    enabled: bool = True
    # The Beta prior: a new peer starts as if it had given prior_good good and prior_bad
    # bad answers (9:1, a lower bound of 0.77 at credible_level 0.9: healthy until shown
    # otherwise). Evidence decays toward it, not toward nothing.
    prior_good: Annotated[float, Field(gt=0, le=1000)] = _TRUST.prior_good
    prior_bad: Annotated[float, Field(gt=0, le=1000)] = _TRUST.prior_bad
    # Each answer's worth of evidence multiplies older evidence by this: 0.97 remembers
    # ~33 answers' worth, so a long honest record does not shield a peer that turns bad.
    forgetting: Annotated[float, Field(gt=0, lt=1)] = _TRUST.forgetting
    # States use the (1 - credible_level) quantile of the posterior.
    credible_level: Annotated[float, Field(ge=0.5, lt=1)] = _TRUST.credible_level
    probation_bound: _Bound = _TRUST.probation_bound
    quarantine_bound: _Bound = _TRUST.quarantine_bound
    # Pieces of evidence (since a reset or the end of the last quarantine) before a quarantine.
    min_evidence: Annotated[int, Field(ge=1, le=10_000)] = _TRUST.min_evidence
    quarantine_s: Annotated[float, Field(gt=0, le=30 * 86400)] = _TRUST.quarantine_s
    quarantine_growth: Annotated[float, Field(ge=1, le=100)] = _TRUST.quarantine_growth
    max_quarantine_s: Annotated[float, Field(gt=0, le=365 * 86400)] = _TRUST.max_quarantine_s
    # Never quarantine more than this fraction of the federation (this node included).
    max_quarantined_fraction: Annotated[float, Field(ge=0, le=1)] = _TRUST.max_quarantined_fraction
    # What one piece of evidence of each kind weighs (in answers' worth).
    weight_canary: _Weight = _TRUST.weight_canary
    weight_cross_check: _Weight = _TRUST.weight_cross_check
    weight_protocol: _Weight = _TRUST.weight_protocol
    weight_report: _Weight = _TRUST.weight_report
    # Multiples of weight_protocol: a reply refused by verification, a reply with nothing
    # to verify (no status message; a timeout or a failed connection is not evidence).
    refusal_factor: Annotated[float, Field(ge=0, le=100)] = _TRUST.refusal_factor
    failure_factor: Annotated[float, Field(ge=0, le=100)] = _TRUST.failure_factor
    # How often an honest peer passes a canary calibrated for its declared model, and
    # agrees with a same-model reference (cross-check): a failure weighs
    # e(1-m)/((1-e)m) times a pass (m: the prior mean).
    canary_pass_rate: Annotated[float, Field(ge=0.5, le=0.999)] = _TRUST.canary_pass_rate
    agreement_rate: Annotated[float, Field(ge=0.5, le=0.999)] = _TRUST.agreement_rate
    # A peer on probation weighs this share of its score in votes and peer choice.
    probation_weight: Annotated[float, Field(ge=0, le=1)] = _TRUST.probation_weight
    # The share of escalations also asked of a second member serving the same declared
    # model, at the same time, to cross-check the answer (its tokens are spent too).
    cross_check_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Canaries (node/canary_traffic.py): the organization's private pool, a JSON Lines
    # file (trust/canaries.py); "" sends none. The share of real calls to a peer that also
    # carry a canary; a peer not contacted this long gets one in the background; the
    # canaries' estimated tokens per budget period (all peers together); no canary twice
    # to one peer within the repeat window.
    canaries: str = ""
    # Per-member settings, by org id; every key must be a member of the roster.
    peers: dict[str, TrustPeerSection] = Field(default_factory=dict)
    canary_rate: Annotated[float, Field(ge=0, le=1)] = _CANARY.rate
    canary_background_interval_s: Annotated[float, Field(gt=0, le=365 * 86400)] = (
        _CANARY.background_interval_s
    )
    canary_budget_tokens: Annotated[int, Field(ge=0, le=1_000_000_000)] = _CANARY.budget_tokens
    canary_budget_period_s: Annotated[float, Field(gt=0, le=365 * 86400)] = _CANARY.budget_period_s
    canary_repeat_window_s: Annotated[float, Field(ge=0, le=10 * 365 * 86400)] = (
        _CANARY.repeat_window_s
    )
    # Members' trust reports (trust/reports.py, node/reports.py): the folded opinion's
    # weight in pseudo-answers; how often this node sends its own (0: never); the oldest
    # report folded in; the founders' pre-trusted share of the reporters' weight; the
    # evidence at which a reported score counts fully.
    report_weight: Annotated[float, Field(ge=0, le=100)] = _REPORTS.report_weight
    report_interval_s: Annotated[float, Field(ge=0, le=7 * 86400)] = _REPORTS.report_interval_s
    report_max_age_s: Annotated[float, Field(gt=0, le=30 * 86400)] = _REPORTS.report_max_age_s
    report_pretrust: Annotated[float, Field(ge=0, le=1)] = _REPORTS.report_pretrust
    report_saturation: Annotated[float, Field(gt=0, le=10_000)] = _REPORTS.report_saturation

    @field_validator("peers")
    @classmethod
    def _org_ids(cls, peers: dict[str, TrustPeerSection]) -> dict[str, TrustPeerSection]:
        for org in peers:
            if not re.match(ORG_ID, org):
                raise ValueError(f"[trust.peers.{org[:64]!r}]: not an organization id")
        return peers

    @model_validator(mode="after")
    def _consistent(self) -> TrustSection:
        if self.quarantine_bound >= self.probation_bound:
            raise ValueError(
                f"quarantine_bound ({self.quarantine_bound}) must be below probation_bound"
                f" ({self.probation_bound})"
            )
        if self.max_quarantine_s < self.quarantine_s:
            raise ValueError(
                f"max_quarantine_s ({self.max_quarantine_s}) must be at least quarantine_s"
                f" ({self.quarantine_s})"
            )
        return self

    def settings(self) -> ReputationSettings:
        fields = set(ReputationSettings.__dataclass_fields__) - {"exempt"}
        exempt = frozenset(org for org, p in self.peers.items() if p.exempt)
        return ReputationSettings(**self.model_dump(include=fields), exempt=exempt)

    def report_settings(self) -> ReportSettings:
        return ReportSettings(**self.model_dump(include=set(_REPORT_KEYS)))

    def canary_settings(self) -> CanarySettings:
        return CanarySettings(
            rate=self.canary_rate,
            background_interval_s=self.canary_background_interval_s,
            budget_tokens=self.canary_budget_tokens,
            budget_period_s=self.canary_budget_period_s,
            repeat_window_s=self.canary_repeat_window_s,
            peer_rates=tuple(
                (org, p.canary_rate)
                for org, p in sorted(self.peers.items())
                if p.canary_rate is not None
            ),
        )


class NodeConfig(_Section):
    node: NodeSection
    server: ServerSection = ServerSection()
    model: ModelSection = ModelSection()
    identity: IdentitySection = IdentitySection()
    federation: FederationSection | None = None
    tls: TlsSection | None = None
    auth: AuthSection = AuthSection()
    limits: LimitsSection = LimitsSection()
    storage: StorageSection = StorageSection()
    openai: OpenAISection = OpenAISection()
    telemetry: TelemetrySection = TelemetrySection()
    logging: LoggingSection = LoggingSection()
    routing: RoutingSection = RoutingSection()
    training: TrainingSection = TrainingSection()
    trust: TrustSection = TrustSection()
    redaction: RedactionPolicy = RedactionPolicy()
    audit: AuditSection = AuditSection()
    groups: dict[Annotated[str, Field(pattern=ORG_ID_PATTERN)], GroupSection] = Field(
        default_factory=dict
    )

    # Set by load_config: the directory relative paths are resolved against.
    base_dir: Path = Path()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _moved_limits(data)

    @field_validator("base_dir", mode="before")
    @classmethod
    def _path(cls, v: object) -> Path:
        return Path(str(v))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.node.data_dir)

    def storage_location(self) -> Location:
        """Where [storage] url puts the node's state (ConfigError naming the key)."""
        return parse_location(
            self.storage.url,
            base_dir=self.base_dir,
            data_dir=self.data_dir,
            password_file=self.storage.password_file,
        )

    def storage_settings(self, org_id: str = "") -> PoolSettings:
        s = self.storage
        return PoolSettings(
            pool_size=s.pool_size,
            max_overflow=s.max_overflow,
            pool_timeout_s=s.pool_timeout_s,
            connect_timeout_s=s.connect_timeout_s,
            statement_timeout_s=s.statement_timeout_s,
            application_name=f"consortium {org_id or self.node.org_id}",
        )

    @property
    def database_path(self) -> Path:
        return self.data_dir / "node.sqlite3"

    @property
    def api_keys_path(self) -> Path:
        return self.data_dir / "api-keys.sqlite3"

    @property
    def trust_path(self) -> Path:
        return self.data_dir / "trust.sqlite3"

    @property
    def redaction_path(self) -> Path:
        """The disclosures of the spans this node redacted (redaction.receipts)."""
        return self.data_dir / "redaction.sqlite3"

    @property
    def audit_path(self) -> Path:
        """The organization's tamper-evident audit log (trust.audit.log)."""
        return self.data_dir / "audit.sqlite3"

    @property
    def advertised_host(self) -> str:
        return self.server.public_host or self.server.host

    def canary_pool(self) -> CanaryPool | None:
        """The pool of `[trust] canaries`, loaded; None when none is configured, or when
        nothing would use it (no [federation], or [trust] enabled = false). A pool that
        is missing or does not parse raises ConfigError naming the file (and the line)."""
        t = self.trust
        if not t.canaries or self.federation is None or not t.enabled:
            return None
        path = self.resolve(t.canaries)
        if not path.is_file():
            raise ConfigError("canary pool not found", path=str(path), key="trust.canaries")
        return load_pool(path)

    def client_credentials(self) -> Any:
        """gRPC channel credentials for calling nodes, or None without [tls]."""
        if self.tls is None:
            return None
        from consortium.trust.tls import channel_credentials

        return channel_credentials(
            self.resolve(self.tls.ca), self.resolve(self.tls.cert), self.resolve(self.tls.key)
        )

    @property
    def grpc_target(self) -> str:
        return f"{self.advertised_host}:{self.server.grpc_port}"

    @property
    def http_scheme(self) -> str:
        """The HTTP port serves TLS whenever gRPC does."""
        return "http" if self.tls is None else "https"

    @property
    def http_url(self) -> str:
        return f"{self.http_scheme}://{self.advertised_host}:{self.server.http_port}"

    def client_ssl_context(self) -> Any:
        """An ssl.SSLContext for HTTPS calls to nodes (and our certificate, for mTLS), or
        None without [tls]."""
        if self.tls is None:
            return None
        from consortium.trust.tls import client_ssl_context

        return client_ssl_context(
            self.resolve(self.tls.ca), self.resolve(self.tls.cert), self.resolve(self.tls.key)
        )


def validation_message(error: ErrorDetails) -> str:
    """One pydantic error as a config file's reader is told it (without its key path):
    "required", "unknown key", or the validator's own words."""
    loc = [str(p) for p in error.get("loc", ())]
    msg = str(error.get("msg", "invalid"))
    kind = error.get("type")
    if kind == "missing":
        msg = "required"
    elif kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch" and loc and loc[-1].endswith("org_id"):
        msg = "must be lowercase letters, digits and dashes (1-63 characters)"
    return re.sub(r"\s+", " ", msg)


def _describe(error: ErrorDetails) -> tuple[str, str]:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
    return loc, validation_message(error)


def parse_config(data: dict[str, object], *, path: Path) -> NodeConfig:
    try:
        cfg = NodeConfig.model_validate({**data, "base_dir": path.parent})
    except ValidationError as e:
        loc, msg = _describe(e.errors()[0])
        extra = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(msg + extra, path=str(path), key=loc or None) from None
    check_policy(cfg.redaction, path=str(path))
    return cfg


def load_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    if not p.exists():
        raise ConfigError("file not found", path=str(p))
    if not p.is_file():
        raise ConfigError("not a file", path=str(p))
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", path=str(p)) from None
    if "base_dir" in data:
        raise ConfigError("unknown key", path=str(p), key="base_dir")
    return parse_config(data, path=p.resolve())
