"""Users, passwords, sessions, API tokens and login rate limits of the web frontend, in the state DB.

- Passwords: argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile), rehashed at login when
  the parameters change. A login for an unknown user verifies against a dummy hash, so that the time
  taken does not say whether the user exists.
- Sessions and tokens are `SELECTOR.VERIFIER` (tokens `sbx_SELECTOR.VERIFIER`): the row is found by
  the selector, the verifier's sha256 compared with hmac.compare_digest; only that hash is stored.
  A token is shown once, when made.
- Sessions expire (absolute and idle), are revocable one by one, and all of a user's go when the
  password changes or the user is removed (tokens too, with the user).
- Failed logins are rows in the state DB, keyed per user and per source address, so the limit
  survives a restart. An attempt over the limit is refused before the password is looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sandbox.errors import NotFound, SandboxError
from sandbox.state import StateDB
from sandbox.web.roles import User, check_pattern, check_role, check_user_name

MIN_PASSWORD, MAX_PASSWORD = 12, 1024
_SESSION_RE = re.compile(r"([0-9a-f]{18})\.([A-Za-z0-9_-]{43})")
_TOKEN_RE = re.compile(r"sbx_([0-9a-f]{18})\.([A-Za-z0-9_-]{43})")
TOKEN_NAME_RE = r"[a-z0-9][a-z0-9_-]{0,39}"


class AuthError(SandboxError):
    """Credentials refused: a wrong password, an unknown, expired or revoked session or token."""


class RateLimited(AuthError):
    """Too many failed logins for this user or from this address."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, hint=f"try again in {int(retry_after) + 1} s")
        self.retry_after = retry_after


class UserExists(SandboxError):
    """A user of that name already exists."""


@dataclass(frozen=True)
class Limits:
    """How long sessions live and how many failed logins a window allows."""

    session_ttl: float = 12 * 3600.0  # absolute
    session_idle: float = 3600.0
    window: float = 900.0
    per_user: int = 5
    per_source: int = 20


@dataclass(frozen=True)
class TokenInfo:
    user: str
    name: str
    created: float
    last_used: float | None
    expires: float | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _digest(verifier: str) -> str:
    return hashlib.sha256(verifier.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    return secrets.token_hex(9), secrets.token_urlsafe(32)


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise SandboxError(
            f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            hint="a passphrase of a few words is fine",
        )
    if any(ch in password for ch in "\0\n\r"):
        raise SandboxError("a password may not hold NUL or line breaks", hint="type it on one line")
    return password


def check_source(source: object) -> str:
    """The client's address as an IP address; the rate limit's per-source key."""
    try:
        return str(ipaddress.ip_address(source))  # type: ignore[arg-type]
    except ValueError as e:
        raise SandboxError(f"invalid source address {source!r}", hint="an IPv4 or IPv6 address") from e


def check_token_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(TOKEN_NAME_RE, name):
        raise SandboxError(
            f"invalid token name {name!r}",
            hint="lowercase letters, digits, '-' and '_', at most 40, starting with a letter or digit",
        )
    return name


class Auth:
    """The web frontend's users, sessions and tokens in `state`."""

    def __init__(
        self,
        state: StateDB,
        *,
        hasher: PasswordHasher | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.hasher = hasher or PasswordHasher()
        self.limits = limits or Limits()
        self.clock = clock
        self._dummy: str | None = None

    # -- users ------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, roles: Mapping[str, str] | None = None) -> User:
        check_user_name(name)
        check_password(password)
        grants = [(check_pattern(p), check_role(r)) for p, r in (roles or {}).items()]
        hashed = self.hasher.hash(password)
        now = self.clock()
        with self.state.transaction() as c:
            if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExists(f"user {name!r} already exists", hint="`sandbox user list` lists them")
            sql = "INSERT INTO users (name, hash, created, updated) VALUES (?, ?, ?, ?)"
            c.execute(sql, (name, hashed, now, now))
            sql = "INSERT INTO user_roles (user, pattern, role) VALUES (?, ?, ?)"
            c.executemany(sql, [(name, p, r) for p, r in grants])
            return self._user(c, name)

    def remove_user(self, name: str) -> None:
        """Remove the user with its roles, sessions and tokens."""
        check_user_name(name)
        with self.state.transaction() as c:
            self._user(c, name)
            c.execute("DELETE FROM users WHERE name = ?", (name,))

    def get_user(self, name: str) -> User:
        check_user_name(name)
        with self.state.transaction(write=False) as c:
            return self._user(c, name)

    def users(self) -> list[User]:
        with self.state.transaction(write=False) as c:
            names = [r[0] for r in c.execute("SELECT name FROM users ORDER BY name")]
            return [self._user(c, n) for n in names]

    def set_role(self, name: str, pattern: str, role: str | None) -> User:
        """Grant `role` on `pattern` (replacing the one held there), or take it away (None)."""
        check_user_name(name)
        check_pattern(pattern)
        if role is not None:
            check_role(role)
        with self.state.transaction() as c:
            self._user(c, name)
            c.execute("DELETE FROM user_roles WHERE user = ? AND pattern = ?", (name, pattern))
            if role is not None:
                sql = "INSERT INTO user_roles (user, pattern, role) VALUES (?, ?, ?)"
                c.execute(sql, (name, pattern, role))
            c.execute("UPDATE users SET updated = ? WHERE name = ?", (self.clock(), name))
            return self._user(c, name)

    def set_password(self, name: str, password: str) -> int:
        """A new password; every session of the user is revoked. Returns how many were."""
        check_user_name(name)
        check_password(password)
        hashed = self.hasher.hash(password)
        with self.state.transaction() as c:
            self._user(c, name)
            c.execute("UPDATE users SET hash = ?, updated = ? WHERE name = ?", (hashed, self.clock(), name))
            return int(c.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount)

    def _user(self, c: Any, name: str) -> User:
        row = c.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"user {name!r} not found", hint="`sandbox user list` lists the users")
        roles = c.execute("SELECT pattern, role FROM user_roles WHERE user = ? ORDER BY pattern", (name,))
        return User(name, tuple((r[0], r[1]) for r in roles), row["created"], row["updated"])

    # -- login and sessions -----------------------------------------------------------------

    def login(self, name: str, password: str, source: str) -> tuple[str, User]:
        """A new session for `name` if the password is right: (session id, user). The id is secret."""
        src = check_source(source)
        if not isinstance(password, str) or not isinstance(name, str):
            raise AuthError("wrong user name or password")
        now = self.clock()
        keys = (f"user:{name[:64]}", f"source:{src}")
        with self.state.transaction() as c:
            self._check_limits(c, keys, now)
            c.executemany("INSERT INTO login_failures (key, ts) VALUES (?, ?)", [(k, now) for k in keys])
            row = c.execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone()
        stored = row["hash"] if row is not None else self._dummy_hash()
        ok = (
            self._verify(stored, password[:MAX_PASSWORD])
            and row is not None
            and len(password) <= MAX_PASSWORD
        )
        if not ok:  # the attempt stays counted
            raise AuthError(
                "wrong user name or password", hint="passwords are set with `sandbox user passwd`"
            )
        rehash = self.hasher.hash(password) if self.hasher.check_needs_rehash(stored) else None
        selector, verifier = _new_secret()
        with self.state.transaction() as c:
            c.execute("DELETE FROM login_failures WHERE key = ?", (keys[0],))
            c.execute(  # this attempt's count for the address; its earlier failures stay
                "DELETE FROM login_failures WHERE rowid IN"
                " (SELECT rowid FROM login_failures WHERE key = ? AND ts = ? LIMIT 1)",
                (keys[1], now),
            )
            if rehash is not None:
                c.execute("UPDATE users SET hash = ? WHERE name = ?", (rehash, name))
            c.execute(
                "INSERT INTO sessions (selector, verifier, user, created, last_seen, expires, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (selector, _digest(verifier), name, now, now, now + self.limits.session_ttl, src),
            )
            return f"{selector}.{verifier}", self._user(c, name)

    def _check_limits(self, c: Any, keys: tuple[str, str], now: float) -> None:
        since = now - self.limits.window
        c.execute("DELETE FROM login_failures WHERE ts < ?", (since,))
        for key, limit in zip(keys, (self.limits.per_user, self.limits.per_source), strict=True):
            count, first = c.execute(
                "SELECT count(*), min(ts) FROM login_failures WHERE key = ? AND ts >= ?", (key, since)
            ).fetchone()
            if count >= limit:
                who = "this user" if key.startswith("user:") else "this address"
                raise RateLimited(
                    f"too many failed logins for {who} ({count} in {int(self.limits.window)} s)",
                    retry_after=max(0.0, first + self.limits.window - now),
                )

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def session_user(self, session_id: str) -> User:
        """The user of a live session; AuthError for an unknown, expired, idle or malformed id."""
        m = _SESSION_RE.fullmatch(session_id) if isinstance(session_id, str) else None
        refused = AuthError("session unknown, expired or revoked", hint="log in again")
        now = self.clock()
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT * FROM sessions WHERE selector = ?", (m.group(1) if m else "",)
            ).fetchone()
            good = hmac.compare_digest(_digest(m.group(2) if m else ""), row["verifier"] if row else "0" * 64)
            if row is None or m is None or not good:
                raise refused
            live = now < row["expires"] and now - row["last_seen"] < self.limits.session_idle
            if live:
                c.execute("UPDATE sessions SET last_seen = ? WHERE selector = ?", (now, row["selector"]))
                return self._user(c, row["user"])
        with self.state.transaction() as c:  # an expired session is gone for good
            c.execute("DELETE FROM sessions WHERE selector = ?", (row["selector"],))
        raise refused

    def logout(self, session_id: str) -> bool:
        """Revoke one session; False if it was not there."""
        m = _SESSION_RE.fullmatch(session_id) if isinstance(session_id, str) else None
        if m is None:
            return False
        with self.state.transaction() as c:
            row = c.execute("SELECT verifier FROM sessions WHERE selector = ?", (m.group(1),)).fetchone()
            if row is None or not hmac.compare_digest(_digest(m.group(2)), row["verifier"]):
                return False
            c.execute("DELETE FROM sessions WHERE selector = ?", (m.group(1),))
            return True

    def revoke_sessions(self, name: str) -> int:
        check_user_name(name)
        with self.state.transaction() as c:
            return int(c.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount)

    # -- API tokens -------------------------------------------------------------------------

    def add_token(self, user: str, name: str, ttl: float | None = None) -> str:
        """A new API token for `user`, returned once (only its hash is kept)."""
        check_user_name(user)
        check_token_name(name)
        if ttl is not None and not (isinstance(ttl, int | float) and 0 < ttl <= 10 * 365 * 86400):
            raise SandboxError(
                f"invalid token lifetime {ttl!r}", hint="a positive duration of at most 10 years"
            )
        selector, verifier = _new_secret()
        now = self.clock()
        with self.state.transaction() as c:
            self._user(c, user)
            if c.execute("SELECT 1 FROM tokens WHERE user = ? AND name = ?", (user, name)).fetchone():
                raise UserExists(
                    f"user {user!r} already has a token named {name!r}",
                    hint=f"remove it first with `sandbox user token rm {user} {name}`, or pick another name",
                )
            c.execute(
                "INSERT INTO tokens (selector, verifier, user, name, created, expires)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (selector, _digest(verifier), user, name, now, None if ttl is None else now + ttl),
            )
        return f"sbx_{selector}.{verifier}"

    def remove_token(self, user: str, name: str) -> None:
        check_user_name(user)
        check_token_name(name)
        with self.state.transaction() as c:
            self._user(c, user)
            if not c.execute("DELETE FROM tokens WHERE user = ? AND name = ?", (user, name)).rowcount:
                raise NotFound(
                    f"user {user!r} has no token named {name!r}",
                    hint=f"`sandbox user list` shows the tokens of {user}",
                )

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        where, args = ("", ()) if user is None else (" WHERE user = ?", (check_user_name(user),))
        with self.state.transaction(write=False) as c:
            rows = c.execute(f"SELECT * FROM tokens{where} ORDER BY user, name", args).fetchall()
        return [TokenInfo(r["user"], r["name"], r["created"], r["last_used"], r["expires"]) for r in rows]

    def token_user(self, token: str) -> User:
        """The user of a valid token (its last use recorded); AuthError otherwise."""
        m = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        now = self.clock()
        with self.state.transaction() as c:
            row = c.execute("SELECT * FROM tokens WHERE selector = ?", (m.group(1) if m else "",)).fetchone()
            good = hmac.compare_digest(_digest(m.group(2) if m else ""), row["verifier"] if row else "0" * 64)
            if row is None or m is None or not good or (row["expires"] is not None and now >= row["expires"]):
                raise AuthError("API token unknown, expired or revoked", hint="ask an admin for a new token")
            c.execute("UPDATE tokens SET last_used = ? WHERE selector = ?", (now, row["selector"]))
            return self._user(c, row["user"])
