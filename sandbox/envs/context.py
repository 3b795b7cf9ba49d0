"""What every collaborator of the env service shares, made once per command: the workspace, its
settings, state DB, image store, backends and the event sink. Nothing below reloads any of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.backends.base import Backend, BackendRegistry
from sandbox.events import Event, EventSink, Kind
from sandbox.routing import RouterDriver, RouterKind
from sandbox.settings import Settings
from sandbox.state import Env, StateDB
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

if TYPE_CHECKING:
    from sandbox.envs.hosts import EnvHosts
    from sandbox.state import Instance


@dataclass(frozen=True)
class AppInfo:
    """The recipe's `app:` as an image records it (what health, routing and promotion need)."""

    port: int | None = None
    health: str | None = None
    user: str | None = None
    smoke: str | None = None
    migrate: str | None = None

    @classmethod
    def from_summary(cls, app: dict[str, Any] | None) -> AppInfo:
        if not app:
            return cls()
        port = app.get("port")
        return cls(
            port=int(port) if port is not None else None,
            health=app.get("health"),
            user=app.get("user"),
            smoke=app.get("smoke"),
            migrate=app.get("migrate"),
        )


@dataclass
class EnvContext:
    ws: Workspace
    sink: EventSink
    settings: Settings
    state: StateDB
    store: ImageStore
    backends: BackendRegistry
    #: makes an env's router driver (env name, kind); None: the real nginx drivers (tests inject fakes)
    router_factory: Callable[[str, RouterKind], RouterDriver] | None = None
    _apps: dict[str, AppInfo] = field(default_factory=dict)
    _hosts: EnvHosts | None = None

    @property
    def routers(self) -> Path:
        return self.ws.runtime / "routers"

    def emit(self, kind: Kind, phase: str, message: str, **data: Any) -> None:
        self.sink(Event(kind, phase=phase, message=message, data=data))

    def app(self, digest: str) -> AppInfo:
        """The image's app, read once per digest and command."""
        info = self._apps.get(digest)
        if info is None:
            info = self._apps[digest] = AppInfo.from_summary(self.store.summary(digest).get("app"))
        return info

    def backend(self, name: str, remote: str | None = None) -> Backend:
        return self.backends.get(name, remote)

    def env_backend(self, env: Env) -> Backend:
        """The backend an env runs on (with the profile's `remote:` it was created with)."""
        return self.backend(env.backend, env.spec.remote)

    @property
    def hosts(self) -> EnvHosts:
        """The production hosts of envs whose profile has `hosts:` (connected on first use)."""
        if self._hosts is None:
            from sandbox.envs.hosts import EnvHosts

            self._hosts = EnvHosts(self)
        return self._hosts

    def backend_on(self, env: Env, host: str | None) -> Backend:
        """The backend of env's instances on `host` (a host of its profile), or on this machine (None)."""
        return self.env_backend(env) if host is None else self.hosts.backend(env.spec, host)

    def inst_backend(self, env: Env, inst: Instance) -> Backend:
        return self.backend_on(env, inst.host)


def default_owner(settings: Settings) -> str:
    return settings.owner or os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
