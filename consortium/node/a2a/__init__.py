"""The A2A v1.0 side of a node: the executor that adapts A2A requests to the node's
service, the request handler that admits every caller, the refusal errors and their codes,
the gRPC and JSON-RPC bindings' pieces (strict JSON, message validation, direct replies),
the agent card, the conformance-kit executor. The A2A client (node/client.py) stays
outside: peers.py, below the executor, sends through it, and the package would otherwise
import itself in a circle."""
