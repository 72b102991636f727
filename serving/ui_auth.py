"""Who may use the search page: accounts (`tbps accounts add NAME --role viewer --file USERS`),
or the user an authenticating reverse proxy names in a header (the usual OIDC set-up: the
proxy logs people in, the page trusts its header and listens on the loopback behind it).

Passwords are stored as scrypt (n=2^14, r=8, p=1) with a 16-byte salt each: slow to guess
even from a stolen file. A login makes a session: a random cookie (HttpOnly, SameSite=Strict,
Secure), idle for at most 8 hours, kept in memory (a restart logs everyone out). Every POST
carries the session's CSRF token in the X-CSRF-Token header (the login form, made before any
session, must come from the page's own origin). Each user may search `rate` times a minute.
Roles are the server's (viewer, operator); the page searches on the server with its own key
and names the user and their address for the server's audit trail.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.access import ROLES

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}
COOKIE = "tbps_session"
CSRF_HEADER = "x-csrf-token"
IDLE_S = 8 * 3600
RATE_WINDOW_S = 60.0


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32).hex()


def read_accounts(path: str | os.PathLike) -> dict[str, dict]:
    path = Path(path)
    try:
        users = json.loads(path.read_text())["users"]
        if any(u["role"] not in ROLES for u in users):
            raise ValueError
        return {u["name"]: u for u in users}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such accounts file (make one with: tbps accounts add NAME --file "
                                f"{path})") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: not a tbps accounts file") from None


def _write_accounts(path: Path, users: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"users": list(users.values())}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_account(path: str | os.PathLike, name: str, role: str, password: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if len(password) < 12:
        raise ValueError("a password needs at least 12 characters")
    path = Path(path)
    users = read_accounts(path) if path.exists() else {}
    if not name.strip() or name in users:
        raise ValueError(f"{path}: an account needs a new, non-empty name ({name!r} is taken or empty)")
    salt = secrets.token_bytes(16)
    users[name] = {"name": name, "role": role, "salt": salt.hex(), **SCRYPT,
                   "scrypt": _scrypt(password, salt, **SCRYPT)}
    _write_accounts(path, users)


def remove_account(path: str | os.PathLike, name: str) -> None:
    users = read_accounts(path)
    if users.pop(name, None) is None:
        raise ValueError(f"{path}: no account named {name!r}")
    _write_accounts(Path(path), users)


@dataclass
class Session:
    user: str
    role: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    seen: float = field(default_factory=time.monotonic)


class PageAuth:
    """Accounts (`accounts`: a file) or a trusted proxy's `user_header` (and `role_header`,
    default role viewer); `rate`: searches a user may make a minute."""

    def __init__(self, accounts: str | os.PathLike | None = None, user_header: str | None = None,
                 role_header: str | None = None, rate: int = 120):
        if (accounts is None) == (user_header is None):
            raise ValueError("the page's users come from an accounts file or a proxy's header: give one")
        self.accounts = read_accounts(accounts) if accounts else None
        self.user_header, self.role_header = (h.lower() if h else None for h in (user_header, role_header))
        self.rate = rate
        self.sessions: dict[str, Session] = {}
        self.searches: dict[str, list[float]] = {}  # per user, over all their sessions
        self.lock = threading.Lock()
        self._dummy_salt = secrets.token_bytes(16)

    def login(self, name: str, password: str) -> str | None:
        """A new session's cookie value, or None (the same work whether or not the name exists)."""
        account = self.accounts.get(name) if self.accounts else None
        salt = bytes.fromhex(account["salt"]) if account else self._dummy_salt
        params = {k: account[k] for k in SCRYPT} if account else SCRYPT
        digest = _scrypt(password, salt, **params)
        if account is None or not hmac.compare_digest(digest, account["scrypt"]):
            return None
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.sessions[token] = Session(name, account["role"])
        return token

    def logout(self, token: str | None) -> None:
        with self.lock:
            self.sessions.pop(token or "", None)

    def session(self, headers, cookies) -> Session | None:
        """The request's user: the proxy's header, or a live session cookie."""
        if self.user_header:
            user = headers.get(self.user_header, "").strip()
            if not user:
                return None
            role = headers.get(self.role_header, "viewer").strip() if self.role_header else "viewer"
            with self.lock:  # one session per proxied user: their CSRF token and rate count
                found = self.sessions.get(f"proxy:{user}")
                if found is None or found.role != role:
                    found = self.sessions[f"proxy:{user}"] = Session(user, role if role in ROLES else "viewer")
                return found
        token = cookies.get(COOKIE)
        with self.lock:
            found = self.sessions.get(token or "")
            if found is None:
                return None
            if time.monotonic() - found.seen > IDLE_S:
                del self.sessions[token]
                return None
            found.seen = time.monotonic()
            return found

    def allow_search(self, session: Session) -> bool:
        """Within the user's rate (a sliding minute, over all their sessions)."""
        now = time.monotonic()
        with self.lock:
            recent = self.searches[session.user] = [t for t in self.searches.get(session.user, [])
                                                    if now - t < RATE_WINDOW_S]
            if len(recent) >= self.rate:
                return False
            recent.append(now)
            return True
