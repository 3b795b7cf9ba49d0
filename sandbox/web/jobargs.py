"""The fixed set of job kinds and their arguments, checked on submit (the HTTP side) and again when
the root worker claims a job: a hostile request cannot name another command, path or profile.

Each kind's arguments are a closed set: an unknown key, a missing required one or a wrong type is
one clear JobArgError. Strings match the env, profile and recipe name rules; images are
`sha256:<64 hex>`; commits 40 or 64 hex digits; booleans are JSON booleans; `probe` (promote,
rollback, resume) is a load probe's rate, whole requests per second from 1 to MAX_PROBE.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.config.names import ENV_NAME_HINT, ENV_NAME_RE, PROFILE_NAME_HINT, PROFILE_NAME_RE
from sandbox.errors import SandboxError

TRIGGERS = ("button", "webhook", "schedule", "cli")
DIGEST_RE = r"sha256:[0-9a-f]{64}"
RECIPE_RE = r"[a-z0-9][a-z0-9-]{0,62}"
COMMIT_RE = r"[0-9a-f]{40}|[0-9a-f]{64}"
WHO_RE = r"[a-z][a-z0-9]{0,19}|root|(webhook|schedule):[a-z0-9][a-z0-9_-]{0,39}"
MAX_TTL = 30 * 86400
MAX_ALLOW = 64
MAX_PROBE = 200  # requests per second of a promotion's load probe


class JobArgError(SandboxError):
    """A job kind, argument, trigger or submitter that is not allowed."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pattern(regex: str, what: str, hint: str) -> Callable[[object], object]:
    rx = re.compile(regex)

    def check(value: object) -> object:
        if not isinstance(value, str) or not rx.fullmatch(value):
            raise JobArgError(f"invalid {what} {_show(value)}", hint=hint)
        return value

    return check


def _bool(value: object) -> object:
    if not isinstance(value, bool):
        raise JobArgError(f"expected true or false, got {_show(value)}", hint="a JSON boolean")
    return value


def _whole(value: object) -> object:
    """JSON has one number type (and JSON Schema's integer takes 600.0): a whole float is an int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _ttl(value: object) -> object:
    value = _whole(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= MAX_TTL:
        raise JobArgError(f"invalid ttl {_show(value)}", hint=f"whole seconds from 60 to {MAX_TTL} (30 days)")
    return value


def _probe(value: object) -> object:
    value = _whole(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PROBE:
        raise JobArgError(
            f"invalid probe rate {_show(value)}", hint=f"whole requests per second from 1 to {MAX_PROBE}"
        )
    return value


def _allow(value: object) -> object:
    if not isinstance(value, list) or len(value) > MAX_ALLOW:
        raise JobArgError(
            f"invalid allow list {_show(value)}", hint=f"a list of at most {MAX_ALLOW} addresses"
        )
    for a in value:
        try:
            ipaddress.ip_network(a if isinstance(a, str) else "x", strict=False)
        except ValueError as e:
            raise JobArgError(f"invalid address {_show(a)} in allow", hint="an IP address or CIDR") from e
    return value


env = _pattern(ENV_NAME_RE, "environment name", ENV_NAME_HINT)
profile = _pattern(PROFILE_NAME_RE, "profile name", PROFILE_NAME_HINT)
digest = _pattern(DIGEST_RE, "image digest", "sha256: and 64 lowercase hex digits")
recipe = _pattern(RECIPE_RE, "recipe name", "lowercase letters, digits and '-'")
commit = _pattern(COMMIT_RE, "commit", "40 or 64 lowercase hex digits")


def _string(regex: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^(?:{regex})$"}


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# check -> the JSON Schema of the values it accepts (the OpenAPI document's JobRequest). `allow`'s
# is narrower than the check: IPv4 addresses and CIDRs, and IPv6 addresses without a prefix.
SCHEMAS: Mapping[Callable[[object], object], dict[str, Any]] = {
    env: _string(ENV_NAME_RE),
    profile: _string(PROFILE_NAME_RE),
    digest: _string(DIGEST_RE),
    recipe: _string(RECIPE_RE),
    commit: _string(COMMIT_RE),
    _bool: {"type": "boolean"},
    _ttl: {"type": "integer", "minimum": 60, "maximum": MAX_TTL},
    _probe: {"type": "integer", "minimum": 1, "maximum": MAX_PROBE},
    _allow: {
        "type": "array",
        "maxItems": MAX_ALLOW,
        "items": {
            "anyOf": [
                {"type": "string", "pattern": rf"^{_OCTET}(\.{_OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?$"},
                {"type": "string", "format": "ipv6"},
            ]
        },
    },
}

# kind -> {argument: (check, required)}; every kind names the env its queue is
KINDS: Mapping[str, Mapping[str, tuple[Callable[[object], object], bool]]] = {
    "up": {"env": (env, True), "image": (digest, False), "ttl": (_ttl, False)},
    "verify": {"env": (env, True)},
    "promote": {
        "env": (env, True),
        "source": (env, True),
        "image": (digest, True),
        "probe": (_probe, False),
    },
    "rollback": {"env": (env, True), "image": (digest, False), "probe": (_probe, False)},
    "resume": {"env": (env, True), "probe": (_probe, False)},
    "maintenance": {"env": (env, True), "on": (_bool, True), "allow": (_allow, False)},
    "readonly": {"env": (env, True), "on": (_bool, True)},
    "extend": {"env": (env, True), "ttl": (_ttl, True)},
    "down": {"env": (env, True)},
    "pipeline": {
        "env": (env, True),
        "recipe": (recipe, True),
        "commit": (commit, False),
        "verify": (_bool, False),
        "promote": (env, False),
        "refresh": (_bool, False),
    },
}
# kinds that settle an interrupted job of their env (and may run while one is unsettled)
SETTLING = frozenset({"resume", "rollback", "down"})


def check_job(kind: object, args: object, who: object = "root", trigger: object = "cli") -> dict[str, Any]:
    """The checked arguments of a job of `kind`; JobArgError names the first thing wrong."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise JobArgError(f"unknown job kind {_show(kind)}", hint=f"one of: {', '.join(KINDS)}")
    if not isinstance(trigger, str) or trigger not in TRIGGERS:
        raise JobArgError(f"unknown trigger {_show(trigger)}", hint=f"one of: {', '.join(TRIGGERS)}")
    if not isinstance(who, str) or not re.fullmatch(WHO_RE, who):
        raise JobArgError(
            f"invalid submitter {_show(who)}", hint="a user name, root, webhook:NAME or schedule:NAME"
        )
    if not isinstance(args, dict):
        raise JobArgError(f"the arguments of a {kind} job must be a mapping, not {_show(args)}")
    spec = KINDS[kind]
    unknown = sorted(str(k) for k in args if k not in spec)
    if unknown:
        raise JobArgError(
            f"unknown argument(s) of a {kind} job: {', '.join(map(_show, unknown))}",
            hint=f"a {kind} job takes: {', '.join(spec)}",
        )
    out: dict[str, Any] = {}
    for name, (check, required) in spec.items():
        if name not in args:
            if required:
                raise JobArgError(
                    f"a {kind} job needs the argument {name!r}", hint=f"it takes: {', '.join(spec)}"
                )
            continue
        try:
            out[name] = check(args[name])
        except JobArgError as e:
            raise JobArgError(f"{kind} job, {name}: {e.message}", hint=e.hint) from e
    if kind == "pipeline":
        _check_pipeline(out)
    return out


def _check_pipeline(args: dict[str, Any]) -> None:
    if args.get("promote") is not None and args["promote"] == args["env"]:
        raise JobArgError(
            "pipeline job: promote names the env it deploys to", hint="promote into another env"
        )


def pipeline_env(profile_name: str, commit_sha: str | None, now: float) -> str:
    """The env a pipeline deploys to: PROFILE-<12 hex of the commit>, or PROFILE-<UTC YYMMDDHHMM>."""
    import time

    suffix = commit_sha[:12] if commit_sha else time.strftime("%y%m%d%H%M", time.gmtime(now))
    name = f"{profile_name}-{suffix}"
    env(name)
    return name
