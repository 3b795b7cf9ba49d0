"""Names of profiles and environments (no pydantic here: `sandbox up` parses names first)."""

from __future__ import annotations

import re

PROFILE_NAME_RE = r"[a-z][a-z0-9]{0,30}"
PROFILE_NAME_HINT = "lowercase letter first, then lowercase letters and digits, at most 31; no '-'"
ENV_NAME_RE = rf"{PROFILE_NAME_RE}(-[a-z0-9]{{1,20}})?"
ENV_NAME_HINT = (
    "an environment name is PROFILE or PROFILE-SUFFIX in lowercase, e.g. staging or staging-42: "
    "the profile name is a letter then up to 30 letters or digits, the suffix 1-20 letters or digits"
)


def env_profile_name(env_name: str) -> str:
    """The profile of an environment: 'staging-42' -> 'staging', 'prod' -> 'prod'; ValueError if malformed."""
    if not isinstance(env_name, str) or not re.fullmatch(ENV_NAME_RE, env_name):
        raise ValueError(f"invalid environment name {env_name!r}: {ENV_NAME_HINT}")
    return env_name.partition("-")[0]
