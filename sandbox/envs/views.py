"""What `ls` and `status` show of an env: its row, with the live state of its instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.envs.context import EnvContext
from sandbox.fsutil import pid_alive
from sandbox.hosts.transport import HostError
from sandbox.state import Env, Instance


@dataclass
class EnvView:
    """What `ls`/`status` show of an env."""

    name: str
    profile: str
    image: str
    backend: str
    owner: str
    state: str
    health: str
    created: float
    expires: float | None
    url: str | None
    instances: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    maintenance: list[str] | None = None  # the maintenance page's allowlist; None: off
    readonly: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def env_view(ctx: EnvContext, env: Env, live: bool) -> EnvView:
    """The env as a user sees it; `live` asks the backend for each instance's state."""
    insts = ctx.state.instances(env.name)
    states = [
        {
            "name": i.name,
            "address": i.address,
            **({"host": i.host, "endpoint": i.endpoint} if i.host else {}),
            "image": i.image,
            "state": _live_state(ctx, env, i) if live else i.state,
        }
        for i in insts
    ]
    state = env.state
    if env.state in ("creating", "deleting") and (env.pid is None or not pid_alive(env.pid)):
        state = f"crashed during {'up' if env.state == 'creating' else 'down'}"
    elif env.expired():
        state = "expired"
    elif live and env.state == "running" and states:
        running = sum(1 for s in states if s["state"] == "running")
        state = "running" if running == len(states) else ("stopped" if running == 0 else "degraded")
    return EnvView(
        name=env.name,
        profile=env.profile,
        image=env.image,
        backend=env.backend,
        owner=env.owner,
        state=state,
        health=env.health,
        created=env.created,
        expires=env.expires,
        url=env.url,
        instances=states,
        error=env.error,
        maintenance=None if env.maintenance is None else list(env.maintenance),
        readonly=env.readonly,
    )


def _live_state(ctx: EnvContext, env: Env, inst: Instance) -> str:
    """The backend's word on an instance; "unreachable" for one on a host that does not answer."""
    try:
        return ctx.inst_backend(env, inst).state(inst.name)
    except HostError:
        return "unreachable"
