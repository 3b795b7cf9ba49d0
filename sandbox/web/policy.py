"""Which `may()` actions a job needs: the one mapping from a job to permissions, used when a job is
submitted (the root side's RPC), when the worker claims it, and to decide which buttons a page shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox.config.names import env_profile_name
from sandbox.web.jobargs import KINDS
from sandbox.web.roles import User, may, own_env_name

# kind -> the action it needs on its env's profile (None: decided by ownership, below)
_ACTION: Mapping[str, str | None] = {
    "up": None,
    "verify": "verify",
    "promote": "promote_prod",
    "rollback": "rollback",
    "resume": "resume",
    "maintenance": "maintenance",
    "readonly": "readonly",
    "extend": "extend_own",
    "down": "down_own",
    "pipeline": "deploy_staging",
}
assert set(_ACTION) == set(KINDS)


def needs(
    user: User, kind: str, args: Mapping[str, Any], owner: str | None
) -> list[tuple[str, str, str | None]]:
    """(action, profile, owner) triples that must all pass for `user` to submit this checked job.

    `owner` is the env's owner (None: the env does not exist yet). A user's own throwaway env is
    dev-<user>: `up` of it needs `up_dev_own`; `up` of any other env `deploy_staging`.
    """
    env = str(args["env"])
    profile = env_profile_name(env)
    out: list[tuple[str, str, str | None]] = []
    if kind == "up":
        if env == own_env_name(user) and owner in (None, user.name):
            out.append(("up_dev_own", profile, user.name))
        else:
            out.append(("deploy_staging", profile, owner))
    else:
        action = _ACTION[kind]
        assert action is not None
        out.append((action, profile, owner))
    if kind == "pipeline":
        if args.get("verify"):
            out.append(("verify", profile, owner))
        if args.get("promote"):
            target = str(args["promote"])
            out.append(("promote_prod", env_profile_name(target), None))
    return out


def allowed(user: User, kind: str, args: Mapping[str, Any], owner: str | None) -> bool:
    return all(may(user, a, p, owner=o) for a, p, o in needs(user, kind, args, owner))


# the buttons of an env's row: kind -> the smallest arguments that ask the same permission
BUTTONS: Mapping[str, Callable[[str], dict[str, Any]]] = {
    "verify": lambda env: {"env": env},
    "resume": lambda env: {"env": env},
    "promote": lambda env: {"env": env, "source": env, "image": "sha256:" + "0" * 64},
    "rollback": lambda env: {"env": env},
    "maintenance": lambda env: {"env": env, "on": True},
    "readonly": lambda env: {"env": env, "on": True},
    "extend": lambda env: {"env": env, "ttl": 3600},
    "down": lambda env: {"env": env},
}


def buttons(user: User, env: str, owner: str | None) -> list[str]:
    """The job kinds whose button `user` may press on env `env` (owned by `owner`)."""
    return [k for k, make in BUTTONS.items() if allowed(user, k, make(env), owner)]


# interrupted jobs of these kinds left a promotion half-done: resume or roll it back
PROMOTE_LIKE = frozenset({"promote", "rollback", "resume"})


def may_dismiss(user: User, kind: str, args: Mapping[str, Any], owner: str | None) -> bool:
    """Whether `user` may dismiss an interrupted job: the permission the job itself needed and, when
    it was a promotion (its env may be half-promoted), that of resuming one (a deployer's)."""
    env = str(args["env"])
    if kind in PROMOTE_LIKE and not allowed(user, "resume", {"env": env}, owner):
        return False
    return allowed(user, kind, args, owner)


def settle_buttons(user: User, kind: str, args: Mapping[str, Any], owner: str | None) -> list[str]:
    """The buttons of an unsettled interrupted job that `user` may press: resume and rollback (of a
    promotion's env), dismiss."""
    env = str(args["env"])
    out = [
        k for k in ("resume", "rollback") if kind in PROMOTE_LIKE and allowed(user, k, {"env": env}, owner)
    ]
    return [*out, "dismiss"] if may_dismiss(user, kind, args, owner) else out
