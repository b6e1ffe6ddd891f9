"""URIs and parameters of the A2A extensions Consortium declares in agent cards."""

from __future__ import annotations

# Which organization and model answer tasks on a node (informational).
MODEL_EXTENSION_URI = "https://consortium.dev/a2a/ext/model/v1"
# The organization's id and its public signing key(s) as JWKs; a federation admin builds
# a roster entry from it (`consortium federation add-member --card`).
IDENTITY_EXTENSION_URI = "https://consortium.dev/a2a/ext/identity/v1"
