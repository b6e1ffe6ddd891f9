"""`consortium init`: a new organization's node directory (node.toml, keys, agent card)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jwcrypto import jwk

from consortium.errors import ConfigError
from consortium.llm.registry import BUNDLED
from consortium.node.a2a.agent_card import build_agent_card, card_json
from consortium.node.auth import is_loopback
from consortium.node.config import NodeConfig, load_config
from consortium.trust.api_keys import ApiKeys
from consortium.trust.files import secure_directory
from consortium.trust.keys import (
    generate_key,
    key_id,
    public_jwk,
    write_private_key,
    write_public_key,
)
from consortium.trust.tls import create_ca, issue_certificate

NODE_TOML = """\
# Consortium node configuration for {org_id}.
# Every key has a default unless marked required; relative paths are relative to this file.

[node]
org_id = "{org_id}"            # required
display_name = "{display_name}"
data_dir = "data"               # task database and other state

[server]
host = "{host}"{public_host_line}
grpc_port = {grpc_port}         # 0: pick a free port at start
http_port = {http_port}         # JSON-RPC and /.well-known/agent-card.json
max_message_bytes = 1048576
shutdown_grace_s = 10.0
stream_interval_s = 0.05        # coalesce streamed tokens (0: one update per token)

[model]
backend = "{backend}"{pad}# llama_cpp | transformers | echo | openai (base_url)
{model_line}
context_size = 2048
threads = {threads:<22}# 0: let llama.cpp choose
prompt_format = "auto"          # auto | chat | completion
max_tokens = 128
temperature = 0.0

[identity]
private_key = "keys/private.jwk"  # mode 0600, never logged
public_key = "keys/public.jwk"

[auth]
# Callers from loopback without an API key share one anonymous scope (their own tasks only).
anonymous_loopback = {anonymous_loopback}

[logging]
level = "INFO"
"""

# The API key `consortium ask` uses, made by `init` (mode 0600; the node keeps its hash).
API_KEY_FILE = "keys/api.key"


TLS_TOML = """
[tls]
cert = "{cert}"
key = "{key}"                    # mode 0600
ca = "{ca}"                      # trusted CA for peers (and for clients with client_auth)
client_auth = {client_auth}      # mutual TLS: clients must present a certificate from `ca`
"""


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    private_key_path: Path
    public_key_path: Path
    card_path: Path
    key_id: str


def init_node(
    org_id: str,
    directory: Path,
    *,
    model: str = "smollm2-135m",
    display_name: str = "",
    grpc_port: int = 50051,
    http_port: int = 8080,
    host: str = "127.0.0.1",
    public_host: str = "",
    tls: bool = False,
    tls_ca_dir: Path | None = None,
    mtls: bool = False,
    threads: int = 0,
    backend: str = "llama_cpp",
    model_lines: str = "",
) -> InitResult:
    """`threads`: the model's `[model] threads` (0: the backend chooses). `public_host`:
    the address other organizations reach the node at, when it is not `host` (a node
    behind a proxy or NAT, or in a network namespace: launch/netns.py); the TLS
    certificate names it too (`tls_hosts`). `backend`: the model's backend;
    `model_lines`: TOML lines added to [model] (an openai backend's base_url). With the
    echo or openai backend `model` is only a name."""
    directory = directory.expanduser()
    config_path = directory / "node.toml"
    if config_path.exists():
        raise ConfigError(
            "node.toml already exists; refusing to overwrite it", path=str(config_path)
        )
    if model in BUNDLED or backend in ("echo", "openai"):
        model_line = f'name = "{model}"'
    else:
        model_path = Path(model).expanduser().resolve()
        if not model_path.is_file():
            raise ConfigError(
                f"not a bundled model ({', '.join(sorted(BUNDLED))}) nor an existing file",
                key="--model",
            )
        model_line = f'name = "{model_path.stem}"\npath = "{model_path}"'
    if model_lines:
        model_line += "\n" + model_lines.strip()
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    private_path = directory / "keys" / "private.jwk"
    public_path = directory / "keys" / "public.jwk"
    write_private_key(private_path, key)
    write_public_key(public_path, key)
    tls_section = ""
    if tls or mtls:
        ca_cert, ca_key = create_ca(tls_ca_dir or directory / "tls" / "ca")
        files = issue_certificate(
            ca_cert, ca_key, directory / "tls", org_id, tls_hosts(host, public_host)
        )
        tls_section = TLS_TOML.format(
            cert=files.cert.relative_to(directory),
            key=files.key.relative_to(directory),
            ca=ca_cert.resolve(),
            client_auth=str(mtls).lower(),
        )
    config_path.write_text(
        NODE_TOML.format(
            org_id=org_id,
            display_name=display_name or org_id,
            host=host,
            public_host_line=(
                f'\npublic_host = "{public_host}"   # what other organizations reach'
                if public_host
                else ""
            ),
            grpc_port=grpc_port,
            http_port=http_port,
            backend=backend,
            pad=" " * max(1, 20 - len(backend)),
            model_line=model_line,
            threads=threads,
            anonymous_loopback=str(is_loopback(host) or host == "localhost").lower(),
        )
        + tls_section
    )
    cfg = load_config(config_path)
    write_owner_key(cfg, directory / API_KEY_FILE)
    card_path = write_card_file(cfg, config_path, key)
    return InitResult(config_path, private_path, public_path, card_path, key_id(key))


def tls_hosts(host: str, public_host: str = "") -> list[str]:
    """The names a node's certificate holds: the address it listens on and the one other
    organizations reach it at (peers verify the certificate against the roster's
    endpoint), localhost and 127.0.0.1; not a wildcard listening address (0.0.0.0, ::),
    which no client connects to."""
    names = {host, public_host, "localhost", "127.0.0.1"} - {"", "0.0.0.0", "::"}
    return sorted(names)


def write_owner_key(cfg: NodeConfig, path: Path) -> None:
    """An admin API key for the organization's own tools (`consortium ask`, /healthz)."""
    secure_directory(cfg.data_dir)
    keys = ApiKeys(cfg.api_keys_path)
    try:
        _, token = keys.create("owner", admin=True)
    finally:
        keys.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    path.chmod(0o600)


def local_api_key(cfg: NodeConfig) -> str | None:
    """The API key `init` left for this node's own tools, if any."""
    path = cfg.base_dir / API_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_card_file(cfg: NodeConfig, config_path: Path, key: jwk.JWK) -> Path:
    """agent-card.json beside node.toml: what a federation admin admits the member from."""
    card = build_agent_card(
        org_id=cfg.node.org_id,
        display_name=cfg.node.display_name,
        description=cfg.node.description,
        grpc_url=cfg.grpc_target,
        http_url=cfg.http_url,
        model_name=cfg.model.name,
        model_backend=cfg.model.backend,
        context_size=cfg.model.context_size,
        public_keys=[public_jwk(key)],
        mutual_tls=cfg.tls is not None and cfg.tls.client_auth,
    )
    card_path = config_path.parent / "agent-card.json"
    card_path.write_text(card_json(card))
    return card_path
