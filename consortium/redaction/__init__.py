"""Detection of personal data and an organization's own secrets in outgoing text.

`settings` validates the recognizer part of node.toml's `[redaction]` section (pure, no
models); `detector` builds a Presidio analyzer over an offline spaCy model and returns
typed spans. The policy that acts on the spans (keep, pseudonymize, mask, block) is not
here yet.
"""
