"""The files that make an instance itself, the same on every backend: hostname, hosts, the app's env.

The app's unit reads /etc/sandbox/instance.env (EnvironmentFile), so every backend writes the same
text there and the app sees the same variables on LXC, LXD or any other system-container backend.
"""

from __future__ import annotations

from sandbox.backends.base import InstanceSpec

ENV_FILE = "etc/sandbox/instance.env"


def identity_files(name: str) -> dict[str, str]:
    """/etc/hostname and /etc/hosts of an instance called `name` (paths relative to the root)."""
    return {
        "etc/hostname": f"{name}\n",
        "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost\n",
    }


def instance_env(spec: InstanceSpec) -> dict[str, str]:
    """The variables the app sees: sandbox's own, then the profile's `env:`."""
    return {
        "SANDBOX_ENV": spec.env,
        "SANDBOX_INSTANCE": spec.name,
        "SANDBOX_IMAGE": spec.image,
        **spec.env_vars,
    }


def env_file_text(spec: InstanceSpec) -> str:
    """instance.env: one quoted KEY="value" line per variable, sorted."""
    return "".join(f'{k}="{_quote(v)}"\n' for k, v in sorted(instance_env(spec).items()))


def instance_files(spec: InstanceSpec) -> dict[str, str]:
    """Every per-instance file: identity and env (paths relative to the root)."""
    return {**identity_files(spec.name), ENV_FILE: env_file_text(spec)}


def _quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
