"""Who may say what, and how much to believe it: keys, JWS over canonical JSON, the
signed-message claims and the one signer, admission (the verification order), call
proofs, admin-signed documents, replay caches, TLS, API keys, and the audit and
reputation hooks of calls to peers."""
