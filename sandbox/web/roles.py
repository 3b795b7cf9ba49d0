"""Roles per env profile, the fixed set of actions, and `may`: the one permission check that the HTTP
side and the root worker both call.

A user holds a role on profile patterns (`*`, `staging`, `dev*`). The role on a profile is the
highest role of every pattern that matches it; a user with no matching pattern may do nothing
there, not even view. Roles are ordered: viewer < developer < deployer < admin, and each may do
what the ones below may.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.config.names import PROFILE_NAME_RE
from sandbox.errors import SandboxError

ROLES = ("viewer", "developer", "deployer", "admin")
_RANK = {role: i for i, role in enumerate(ROLES, 1)}

# action -> the lowest role that may do it
ACTIONS: Mapping[str, str] = {
    "view": "viewer",  # envs, images, timeline, audit, logs
    "up_dev_own": "developer",  # create the user's own throwaway env (dev-<user>)
    "down_own": "developer",  # remove it
    "extend_own": "developer",  # extend its TTL
    "deploy_staging": "developer",  # up an env of a profile from an image or a commit
    "verify": "developer",
    "cancel_job": "developer",  # a queued job of this profile
    "promote_prod": "deployer",  # promote the verified digest into an env of the profile
    "rollback": "deployer",
    "resume": "deployer",  # resume an interrupted promotion
    "maintenance": "deployer",
    "readonly": "deployer",
    "extend": "deployer",  # the TTL of anyone's env
    "down": "deployer",  # anyone's env
    "admin": "admin",  # users, tokens, settings: needs admin on the pattern '*'
}
# actions on an env the user owns: a developer needs to own it; a deployer may anyway
OWN_ACTIONS = frozenset({"up_dev_own", "down_own", "extend_own"})

USER_NAME_RE = r"[a-z][a-z0-9]{0,19}"
USER_NAME_HINT = (
    "a user name is a lowercase letter then up to 19 lowercase letters or digits "
    "(so that dev-<user> is a valid environment name)"
)
PATTERN_RE = r"[a-z*?][a-z0-9*?]{0,30}"
PATTERN_HINT = "a profile name, or a pattern of one with * and ?, e.g. '*', 'staging', 'dev*'"


class AccessError(SandboxError):
    """A malformed user name, role, pattern or action."""


@dataclass(frozen=True)
class User:
    """A user of the web frontend and its roles: ((pattern, role), ...), sorted by pattern."""

    name: str
    roles: tuple[tuple[str, str], ...] = ()
    created: float = 0.0
    updated: float = 0.0

    def role_for(self, profile: str) -> str | None:
        """The highest role whose pattern matches `profile`, or None."""
        best: str | None = None
        for pattern, role in self.roles:
            if fnmatch.fnmatchcase(profile, pattern) and (best is None or _RANK[role] > _RANK[best]):
                best = role
        return best

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "roles": {p: r for p, r in self.roles},
            "created": self.created,
            "updated": self.updated,
        }


# a job's submitter `root` is the CLI on this machine: no web user may bear that name
RESERVED_USER_NAMES = frozenset({"root"})


def check_user_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(USER_NAME_RE, name):
        raise AccessError(f"invalid user name {_show(name)}", hint=USER_NAME_HINT)
    if name in RESERVED_USER_NAMES:
        raise AccessError(
            f"the user name {name!r} is reserved", hint="jobs queued by root's CLI are submitted by 'root'"
        )
    return name


def check_role(role: object) -> str:
    if not isinstance(role, str) or role not in _RANK:
        raise AccessError(f"invalid role {_show(role)}", hint=f"one of: {', '.join(ROLES)}")
    return role


def check_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or not re.fullmatch(PATTERN_RE, pattern):
        raise AccessError(f"invalid profile pattern {_show(pattern)}", hint=PATTERN_HINT)
    return pattern


def check_action(action: object) -> str:
    if not isinstance(action, str) or action not in ACTIONS:
        raise AccessError(f"unknown action {_show(action)}", hint=f"one of: {', '.join(ACTIONS)}")
    return action


def parse_grant(text: str) -> tuple[str, str]:
    """'PATTERN=ROLE' (the CLI's --role) as a checked (pattern, role)."""
    pattern, sep, role = text.partition("=")
    if not sep:
        raise AccessError(
            f"invalid role grant {_show(text)}",
            hint="write PATTERN=ROLE, e.g. '*=viewer' or 'staging=developer'",
        )
    return check_pattern(pattern), check_role(role)


def may(user: User, action: str, env_profile: str, *, owner: str | None = None) -> bool:
    """Whether `user` may do `action` on an env of profile `env_profile`.

    `owner` is the env's owner, needed by the *_own actions. The `admin` action ignores the profile:
    it needs admin on the pattern '*'. An unknown action or a malformed profile is an AccessError
    (a caller's bug or a hostile request), never a silent yes.
    """
    check_action(action)
    if action == "admin":
        return any(p == "*" and r == "admin" for p, r in user.roles)
    if not isinstance(env_profile, str) or not re.fullmatch(PROFILE_NAME_RE, env_profile):
        raise AccessError(f"invalid profile name {_show(env_profile)}", hint=PATTERN_HINT)
    role = user.role_for(env_profile)
    if role is None:
        return False
    rank = _RANK[role]
    if action in OWN_ACTIONS and owner != user.name:
        return rank >= _RANK["deployer"]
    return rank >= _RANK[ACTIONS[action]]


def own_env_name(user: User, profile: str = "dev") -> str:
    """The name of a user's throwaway env: dev-alice."""
    return f"{profile}-{user.name}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def deploy_patterns(user: User) -> list[str]:
    """The profile patterns on which `user` may `up` an env (deploy_staging): where the deploy form
    of the envs page applies. The root side still checks `may()` for the env a form names."""
    least = _RANK[ACTIONS["deploy_staging"]]
    return sorted(pattern for pattern, role in user.roles if _RANK[role] >= least)
