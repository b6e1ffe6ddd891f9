"""Consortium: a federated, multi-organization network of LLM agents speaking A2A v1.0."""

import os

# a2a-sdk wraps its request handler and client methods in spans for the *global* tracer
# provider. Consortium traces with its own per-node providers and spans, so those wrappers
# would only cost time on every A2A call.
# Must be decided before a2a is imported; set the variable to "true" to keep them.
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")

from consortium.errors import ConfigError, ConsortiumError, ModelError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ConsortiumError", "ModelError", "__version__"]
