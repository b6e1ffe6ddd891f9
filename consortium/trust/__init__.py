"""Who may say what: identities and keys, verification, peer reputation, audit log."""
