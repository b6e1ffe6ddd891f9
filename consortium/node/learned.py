"""The learned router on a node: its policy artifact (verified with the federation admin
key, re-read when the file changes; a bad file is refused and the previous policy kept:
a bad signature, features this node does not compute, an embedding of another size than
its encoder's, or another federation's id) and the features it needs, computed here
(sentence embedding, draft signals)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jwcrypto import jwk

from consortium.errors import ConsortiumError, RequestRejected
from consortium.learning.policy import LogisticPolicy, PolicyArtifact, load_policy
from consortium.protocols.routing import LearnedRouter, RoutingInput
from consortium.protocols.routing_features import DRAFT_NORMALISATION, feature_names, features
from consortium.trust.audit import AuditLog, NoOpAuditLog

log = logging.getLogger(__name__)


class NodeFeatures:
    """The FeatureFunction of a node: task.features carries the embedding and the
    generated draft's choice, computed by the orchestrator."""

    needs_draft = True

    def __call__(self, task: RoutingInput) -> Sequence[float]:
        embedding = task.features.get("embedding", ())
        generated = task.features.get("generated_choice", (-1.0,))
        choice = int(generated[0]) if generated and generated[0] >= 0 else None
        return features(task.prompt, task.draft, embedding, choice)


class PolicyHolder:
    """The current policy: loaded on first use, re-read when the file changes."""

    def __init__(
        self,
        path: Path,
        admin_keys: list[jwk.JWK] | None,
        threshold: float,
        target: str,
        *,
        embedding_dim: int | None = None,
        federation_id: str | None = None,
    ) -> None:
        self.path = path
        self._keys = admin_keys
        # What this node computes and belongs to (None: not checked).
        self._embedding_dim = embedding_dim
        self._federation_id = federation_id
        self._threshold = threshold
        self._target = target
        self._policy: LogisticPolicy | None = None
        self._stamp: tuple[int, int, int] | None = None
        self.refused = 0
        self.loaded = 0
        # Told of every policy version taken and refused (trust.audit).
        self.audit: AuditLog = NoOpAuditLog()

    def _check(self, artifact: PolicyArtifact) -> None:
        fed = self._federation_id
        if fed is not None and artifact.federation_id != fed:
            named = artifact.federation_id
            meant = f"federation {named!r}" if named else "no federation"
            raise ConsortiumError(
                f"policy {artifact.version} is for {meant}; this node belongs to {fed!r}"
            )
        if artifact.features.normalisation != DRAFT_NORMALISATION:
            raise ConsortiumError(
                f"policy {artifact.version} expects option probabilities normalised by "
                f"{artifact.features.normalisation}; this node drafts with "
                f"{DRAFT_NORMALISATION}"
            )
        n = len(artifact.features.names)
        size = n - len(feature_names(0))
        if size <= 0 or tuple(artifact.features.names) != feature_names(size):
            raise ConsortiumError(
                f"policy {artifact.version} uses features this node does not compute"
            )
        if self._embedding_dim is not None and size != self._embedding_dim:
            raise ConsortiumError(
                f"policy {artifact.version} expects sentence embeddings of {size} "
                f"dimensions; this node's encoder gives {self._embedding_dim}"
            )

    def current(self) -> LogisticPolicy:
        try:
            st = self.path.stat()
            # The inode too: a file renamed over it within one clock tick, of the same
            # size, is a new policy all the same (write_policy replaces the file).
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp is not None and stamp != self._stamp:
            try:
                artifact = load_policy(self.path, self._keys)
                self._check(artifact)
            except ConsortiumError as e:
                self.refused += 1
                log.warning("refused routing policy %s: %s", self.path, e)
                self.audit.record("policy", detail={"verdict": "refused"})
            else:
                self._policy = LogisticPolicy(artifact)
                self.loaded += 1
                log.info("loaded routing policy %s (version %s)", self.path, artifact.version)
                self.audit.record(
                    "policy", detail={"verdict": "loaded", "version": str(artifact.version)}
                )
            self._stamp = stamp
        if self._policy is None:
            raise RequestRejected(f"no valid routing policy at {self.path}")
        return self._policy

    @property
    def version(self) -> str | None:
        """The loaded policy's version (None before the first valid load)."""
        return self._policy.version if self._policy is not None else None

    def router(self) -> LearnedRouter:
        return LearnedRouter(self.current(), NodeFeatures(), self._threshold, self._target)


class LazyEncoder:
    """The sentence encoder, loaded in a thread: at start-up for a router that routes on
    embeddings, else with the first question to embed."""

    def __init__(self) -> None:
        self._encoder: Any = None
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with self._lock:
            if self._encoder is None:
                from consortium.llm.embeddings import SentenceEncoder

                self._encoder = await asyncio.to_thread(SentenceEncoder)

    async def embed(self, text: str) -> list[float]:
        await self.load()
        vectors = await asyncio.to_thread(self._encoder.encode, [text])
        return [float(x) for x in vectors[0]]
