"""The runtime of one organization: config, LLM backends, A2A server, stores, CLI."""
