"""Workspace settings (`sandbox.yaml`): the network sandbox's backends use, the routers (port range,
own or system nginx).

Plain dataclasses, so that reading them costs nothing when the file is absent or
unchanged; the file is validated (pydantic, with file:line errors) only when it
changed since the last check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sandbox.fsutil import atomic_write, tree_stats
from sandbox.workspace import Workspace


@dataclass(frozen=True)
class Network:
    bridge: str = "sandbox0"
    subnet: str = "10.213.0.0/24"


@dataclass(frozen=True)
class Routers:
    port_range: tuple[int, int] = (18000, 18999)
    # own: an nginx process per env; system: one include file per env in the host's nginx;
    # auto: system when that nginx runs (its pid file names a live process), else own
    nginx: str = "own"
    system_conf: str = "/etc/nginx/nginx.conf"
    include_dir: str = "/etc/nginx/conf.d"  # included in the system config's http block
    stream_include_dir: str | None = None  # included in its stream block (needed for profile ports)
    pid_file: str = "/run/nginx.pid"


@dataclass(frozen=True)
class Settings:
    network: Network = field(default_factory=Network)
    routers: Routers = field(default_factory=Routers)
    owner: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Settings:
        net = d.get("network") or {}
        routers = d.get("routers") or {}
        assert isinstance(net, dict) and isinstance(routers, dict)
        owner = d.get("owner")
        return cls(
            Network(**net),
            Routers(**{**routers, "port_range": tuple(routers.get("port_range", (18000, 18999)))}),
            owner if isinstance(owner, str) else None,
        )


def load_settings(ws: Workspace) -> Settings:
    path = ws.root / "sandbox.yaml"
    if not path.is_file():
        return Settings()
    cache = ws.state / "fingerprints" / "settings.json"
    stats = tree_stats([path])
    try:
        doc = json.loads(cache.read_text())
        if doc["stats"] == stats:
            return Settings.from_dict(doc["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from sandbox.settings_schema import validate_settings  # pydantic: only when the file changed

    settings = Settings.from_dict(validate_settings(path))
    if ws.state.is_dir():
        atomic_write(cache, json.dumps({"stats": stats, "settings": asdict(settings)}).encode())
    return settings
