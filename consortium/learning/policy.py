"""The shared routing policy: a logistic model predicting whether the local answer is
adequate, and the artifact file that carries it between organizations.

An artifact holds the weights, the feature spec (names, embedding model, standardisation),
a version, training metrics and the federation id, and is signed by the federation admin
key(s): a detached EdDSA JWS over the RFC 8785 JSON of everything but the signatures, as
the roster is (trust.documents). A node loads only an artifact whose signature verifies
and whose features are the ones it computes (consortium/protocols/routing_features.py).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from jwcrypto import jwk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consortium.errors import ConfigError
from consortium.learning.settings import Label
from consortium.trust.documents import DocumentError, sign_document, verify_document

FORMAT: Literal["consortium-routing-policy/1"] = "consortium-routing-policy/1"


class PolicyError(ConfigError):
    """A policy artifact is missing, malformed, unsigned or wrongly signed."""


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(min_length=1)
    embedding_model: str = ""
    # How the local model's option scores became the probabilities the features use.
    normalisation: Literal["none", "tokens", "chars"] = "none"
    # Standardisation applied before the weights: (x - mean) / scale.
    mean: list[float]
    scale: list[float]

    @model_validator(mode="after")
    def _lengths(self) -> FeatureSpec:
        if not len(self.mean) == len(self.scale) == len(self.names):
            raise ValueError("names, mean and scale differ in length")
        if any(not s > 0 for s in self.scale):
            raise ValueError("every scale must be positive")
        return self


class PolicyArtifact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["consortium-routing-policy/1"] = FORMAT
    version: str
    federation_id: str = ""
    created_at: str = ""
    # What the model predicts: P(local answer correct), or P(escalating helps).
    label: Label = "local_correct"
    features: FeatureSpec
    weights: list[float]
    intercept: float
    metrics: dict[str, float] = Field(default_factory=dict)
    signatures: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> PolicyArtifact:
        if len(self.weights) != len(self.features.names):
            raise ValueError(f"{len(self.weights)} weights for {len(self.features.names)} features")
        if not all(math.isfinite(w) for w in [*self.weights, self.intercept]):
            raise ValueError("weights must be finite numbers")
        return self

    def signed_content(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signatures"})


class LogisticPolicy:
    """An artifact ready to score feature vectors (the `AdequacyModel` of LearnedRouter)."""

    def __init__(self, artifact: PolicyArtifact) -> None:
        self.artifact = artifact
        self.version = artifact.version
        self.feature_names = tuple(artifact.features.names)
        self._w = np.asarray(artifact.weights, dtype=np.float64)
        self._mean = np.asarray(artifact.features.mean, dtype=np.float64)
        self._scale = np.asarray(artifact.features.scale, dtype=np.float64)

    def probability(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """P(label) for each row of x."""
        z = ((np.atleast_2d(np.asarray(x, dtype=np.float64)) - self._mean) / self._scale) @ self._w
        return 1.0 / (1.0 + np.exp(-(z + self.artifact.intercept)))

    def adequacy(self, features: Sequence[float]) -> float:
        if len(features) != len(self.feature_names):
            raise ValueError(
                f"policy {self.version} expects {len(self.feature_names)} features, "
                f"got {len(features)}"
            )
        p = float(self.probability([list(features)])[0])
        return p if self.artifact.label == "local_correct" else 1.0 - p


def fit_logistic(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    names: Sequence[str],
    version: str,
    label: Label = "local_correct",
    c: float = 1.0,
    embedding_model: str = "",
    normalisation: Literal["none", "tokens", "chars"] = "none",
    sample_weight: npt.ArrayLike | None = None,
) -> PolicyArtifact:
    """Trains the model on standardised features (scikit-learn's LogisticRegression)."""
    from sklearn.linear_model import LogisticRegression

    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.int64)
    if xa.ndim != 2 or len(xa) != len(ya) or xa.shape[1] != len(names):
        raise ValueError("x must be (samples, features) matching y and the feature names")
    if len(set(ya.tolist())) < 2:
        raise ValueError("training needs examples of both classes")
    mean = xa.mean(axis=0)
    scale = xa.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit((xa - mean) / scale, ya, sample_weight=sample_weight)
    return PolicyArtifact(
        version=version,
        label=label,
        features=FeatureSpec(
            names=list(names),
            embedding_model=embedding_model,
            normalisation=normalisation,
            mean=mean.tolist(),
            scale=scale.tolist(),
        ),
        weights=model.coef_[0].tolist(),
        intercept=float(model.intercept_[0]),
    )


def sign_policy(artifact: PolicyArtifact, admin_keys: list[jwk.JWK]) -> PolicyArtifact:
    return sign_document(artifact, admin_keys)


def verify_policy(artifact: PolicyArtifact, trusted_admin_keys: list[jwk.JWK]) -> str:
    """The key id of an admin key whose signature verifies; raises PolicyError."""
    try:
        return verify_document(artifact, trusted_admin_keys, what="policy artifact")
    except DocumentError as e:
        raise PolicyError(str(e)) from None


def load_policy(path: Path, trusted_admin_keys: list[jwk.JWK] | None) -> PolicyArtifact:
    """Parses an artifact and, unless `trusted_admin_keys` is None (offline evaluation of
    one's own training run), checks its signature."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError("policy file not found", path=str(path)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyError(f"not JSON: {e}", path=str(path)) from None
    try:
        artifact = PolicyArtifact.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PolicyError(f"{loc}: {err['msg']}" if loc else err["msg"], path=str(path)) from None
    if trusted_admin_keys is not None:
        try:
            verify_policy(artifact, trusted_admin_keys)
        except PolicyError as e:
            raise PolicyError(str(e), path=str(path)) from None
    return artifact


def write_policy(path: Path, artifact: PolicyArtifact) -> None:
    """Writes atomically: a node reloading the file never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(artifact.model_dump(mode="json"), indent=1) + "\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
