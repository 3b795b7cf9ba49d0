"""An env's profile: resolved from profiles/ (through the cache while the files are unchanged)."""

from __future__ import annotations

from sandbox.config.names import env_profile_name
from sandbox.config.profile_cache import ProfileData, recall, remember
from sandbox.errors import SandboxError
from sandbox.workspace import Workspace


def profile_for(ws: Workspace, env_name: str) -> ProfileData:
    """The merged profile env `env_name` uses: from the cache while profiles/ is unchanged, else loaded
    and checked (YAML + pydantic, with file:line errors)."""
    try:
        name = env_profile_name(env_name)
    except ValueError as e:
        raise SandboxError(str(e), hint="e.g. staging-42, dev-alice, prod") from e
    cached = recall(ws.state, ws.profiles, name)
    if cached is not None:
        return cached
    from sandbox.config.profile_loader import load_profile_by_name  # YAML + pydantic: only on a miss

    lp = load_profile_by_name(ws.profiles, name, display_root=ws.root)
    data = ProfileData(
        lp.profile.name, lp.profile.model_dump(mode="json"), lp.digest(), [str(s) for s in lp.sources]
    )
    remember(ws.state, ws.profiles, data)
    return data


def parse_ttl(text: str) -> float:
    """`--ttl 4h` in seconds; a clear error otherwise."""
    from sandbox.config.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise SandboxError(f"--ttl {text!r}: {e}", hint="e.g. --ttl 90m, --ttl 4h, --ttl 7d") from e
    if seconds <= 0:
        raise SandboxError(f"--ttl {text!r} must be longer than zero", hint="e.g. --ttl 90m, --ttl 4h")
    return seconds
