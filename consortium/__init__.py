"""Consortium: a federated, multi-organization network of LLM agents speaking A2A v1.0."""

from consortium.errors import ConfigError, ConsortiumError, ModelError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ConsortiumError", "ModelError", "__version__"]
