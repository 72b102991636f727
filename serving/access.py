"""Who may do what on a served gallery: API keys by role, checked by the server's own models.

Roles: `viewer` searches; `operator` also ingests and erases. Model control and the other admin
protocols of Triton (model-repository, shared-memory, statistics, trace, logging) take a
separate admin key, checked by Triton itself (its restricted protocols).

A keys file (`tbps keys add NAME --role R --file KEYS`) holds each key's name, role and SHA-256,
never the key: a key is 32 random bytes (256 bits), so a fast hash is as safe to store as a slow
one (slow hashes protect guessable passwords, which keys are not). Clients send their key in the
`tbps-key` header (gRPC metadata or HTTP); `tbps serve` has Triton forward `tbps-*` headers to
the models as request parameters (ensembles pass them to every step). A server given a keys
file refuses a request without a valid key of a sufficient role, in one line, and keeps
serving; without one, everyone may search, ingest and erase (the loopback demo).

`tbps-user` and `tbps-client`, sent by a front that authenticates people itself (the search
page), name the person and their address in the audit trail; they are taken only from a
request whose key is valid, and are that key holder's word.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

ROLES = ("viewer", "operator")  # each role may do what the ones before it may
KEY_HEADER, USER_HEADER, CLIENT_HEADER = "tbps-key", "tbps-user", "tbps-client"
HEADER_PATTERN = "tbps-.*"  # what Triton forwards to the models
KEYS_ENV, AUDIT_ENV = "TBPS_KEYS_FILE", "TBPS_AUDIT_DIR"  # set by tbps serve for the models
AUDIT_SYNC_ENV = "TBPS_AUDIT_SYNC_MS"  # the audit trail's weaker mode (serving/audit.py), from the environment
ADMIN_HEADER = "tbps-admin-key"  # HTTP; over gRPC Triton expects it prefixed (GRPC_ADMIN_HEADER)
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
# model-config stays open: clients read a model's batch limit from it
ADMIN_PROTOCOLS = "model-repository,shared-memory,statistics,trace,logging"


class AccessDenied(PermissionError):
    """A request without the credential its operation needs: its message is the answer."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    try:
        keys = json.loads(path.read_text())["keys"]
        for k in keys:
            if k["role"] not in ROLES or len(k["sha256"]) != 64 or not k["name"]:
                raise ValueError(k)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such keys file (make one with: tbps keys add NAME --role viewer "
                                f"--file {path})") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a tbps keys file (expected {{\"keys\": [{{\"name\", \"role\" ({', '.join(ROLES)}), "
                         f"\"sha256\"}}]}})") from None
    return keys


def add_key(path: str | os.PathLike, name: str, role: str) -> str:
    """A new random key for `name` with `role`, its hash stored in the keys file (made 0600 if
    new); the key itself is returned once and kept nowhere."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    path = Path(path)
    keys = read_keys(path) if path.exists() else []
    if not name.strip() or any(k["name"] == name for k in keys):
        raise ValueError(f"{path}: a key needs a new, non-empty name ({name!r} is taken or empty)")
    key = secrets.token_urlsafe(32)
    keys.append({"name": name, "role": role, "sha256": _digest(key)})
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": keys}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key


def remove_key(path: str | os.PathLike, name: str) -> None:
    keys = read_keys(path)
    if not any(k["name"] == name for k in keys):
        raise ValueError(f"{path}: no key named {name!r}")
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": [k for k in keys if k["name"] != name]}, f, indent=1)
    os.replace(tmp, path)


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches only this machine."""
    return host in ("::1", "localhost") or host.startswith("127.")


def secret_from(file: str | None, env: str) -> str | None:
    """A secret from a file (first line) or an environment variable, never from an argument."""
    if file:
        value = Path(file).read_text().strip()
        if not value:
            raise ValueError(f"{file} is empty")
        return value
    return os.environ.get(env) or None


class Gate:
    """A model's check of the credentials of its requests (the keys file named by TBPS_KEYS_FILE)."""

    def __init__(self):
        path = os.environ.get(KEYS_ENV)
        self.keys = {k["sha256"]: k for k in read_keys(path)} if path else None

    def admit(self, params: dict, role: str, what: str) -> dict:
        """Who is asking (name, role, user, client), if their key may `what` (needs `role`)."""
        user, client = str(params.get(USER_HEADER, ""))[:200], str(params.get(CLIENT_HEADER, ""))[:200]
        if self.keys is None:
            return {"who": "anonymous", "user": user, "client": client}
        key = params.get(KEY_HEADER)
        if not key:
            raise AccessDenied(f"permission denied: {what} needs a key (send it in the {KEY_HEADER} header)")
        # a lookup by the key's SHA-256: its timing tells nothing about any key's own characters
        found = self.keys.get(_digest(str(key)))
        if found is None:
            raise AccessDenied(f"permission denied: {what}: that key is not valid on this server")
        if ROLES.index(found["role"]) < ROLES.index(role):
            raise AccessDenied(f"permission denied: {what} needs the {role} role; key {found['name']!r} is a "
                               f"{found['role']}")
        return {"who": found["name"], "user": user, "client": client}
