"""The node's OpenAI-compatible API on its HTTP port (/v1): a second binding of
`NodeService`, beside the A2A one (node/a2a/).

`POST /v1/chat/completions`, `POST /v1/completions` (raw prompts, for base models) and
`GET /v1/models`, answered by the same service as A2A tasks, so the same budgets,
signing, trust, redaction and provenance apply; every completion request is also an A2A
task in the node's task store, owned by the caller. The modules: `schemas` (requests),
`responses` (OpenAI's objects and stream chunks), `errors` (OpenAI-shaped errors),
`catalogue` (model names and the routes they stand for), `tasks` (the task record),
`streaming` (the SSE response), `routes` (the endpoints: admission, the caller's limits
(node.limits, shared with A2A), the run of one request).
"""

from consortium.node.openai.errors import guard_refusal
from consortium.node.openai.routes import PREFIX, OpenAIApi

__all__ = ["PREFIX", "OpenAIApi", "guard_refusal"]
