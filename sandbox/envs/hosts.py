"""An env's production hosts: one backend per host (lxc through the host agent, the host's docker
engine or libvirtd over a forwarded socket, or the host's LXD over its HTTPS API), made on first
use, only for hosts the env's profile names; and the steps before anything runs there: every host
reachable, its engine ready, the image shipped and verified.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox.backends.base import Backend
from sandbox.backends.remote import OnHost, RemoteLxc
from sandbox.config.placement import place
from sandbox.config.resolved import HostSpec, ResolvedProfile
from sandbox.envs.context import EnvContext
from sandbox.errors import SandboxError
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.ssh import SshTransport
from sandbox.hosts.transport import HostError
from sandbox.routing.remote import RemoteRouter


class EnvHosts:
    def __init__(self, ctx: EnvContext) -> None:
        self.ctx = ctx
        self._made: dict[tuple[str, str, str], Backend] = {}
        self._routers: dict[tuple[str, str], tuple[HostAgent, str]] = {}

    def spec(self, profile: ResolvedProfile, host: str) -> HostSpec:
        for h in profile.hosts:
            if h.name == host:
                return h
        raise SandboxError(
            f"host {host!r} is not in profile {profile.name}",
            hint=f"its hosts: {', '.join(h.name for h in profile.hosts) or 'none'}",
        )

    def transport(self, h: HostSpec) -> SshTransport:
        cfg = self.ctx.settings.hosts.ssh_config
        return SshTransport(
            h.name,
            h.ssh,
            ssh_config=Path(cfg) if cfg else None,
            connect_timeout=self.ctx.settings.hosts.connect_timeout,
        )

    def backend(self, profile: ResolvedProfile, host: str) -> Backend:
        """The backend on `host` (a host of `profile`) for the profile's engine, made once per command."""
        h = self.spec(profile, host)
        key = (h.name, h.ssh, profile.backend)
        made = self._made.get(key)
        if made is None:
            t = self.transport(h)
            agent = HostAgent(t)
            address = h.address or _address(t)
            if profile.backend == "docker":
                from sandbox.backends.remotedocker import RemoteDocker  # the docker SDK: only when used

                made = RemoteDocker(self.ctx.backends.ctx, agent, address)
            elif profile.backend == "libvirt":
                from sandbox.backends.remotelibvirt import RemoteLibvirt  # libvirt-python: only when used

                made = RemoteLibvirt(self.ctx.backends.ctx, agent, address)
            elif profile.backend == "lxd":
                from sandbox.backends.remotelxd import RemoteLxd  # pylxd: only when used

                made = RemoteLxd(self.ctx.backends.ctx, agent, address)
            else:
                made = RemoteLxc(self.ctx.backends.ctx, agent, address)
            self._made[key] = made
        return made

    def router_spec(self, profile: ResolvedProfile) -> HostSpec:
        """The router host of `profile` as a host (its ssh target: router.ssh, or that host's)."""
        r = profile.router
        assert r is not None and r.host is not None
        ssh = r.ssh or next((h.ssh for h in profile.hosts if h.name == r.host), None)
        if ssh is None:
            raise SandboxError(f"router host {r.host} has no ssh target", hint="give router: an ssh: target")
        known = next((h for h in profile.hosts if h.name == r.host), None)
        return HostSpec(
            name=r.host, ssh=ssh, address=known.address if known else None, labels={}, instances=None
        )

    def router_agent(self, profile: ResolvedProfile) -> tuple[HostAgent, str]:
        """The host agent of the router host, and the address this machine reaches it at."""
        h = self.router_spec(profile)
        key = ("router:" + h.name, h.ssh)
        made = self._routers.get(key)
        if made is None:
            t = self.transport(h)
            made = self._routers[key] = (HostAgent(t), h.address or _address(t))
        return made

    def router(self, profile: ResolvedProfile, env: str) -> RemoteRouter:
        return RemoteRouter(self.router_agent(profile)[0], self.ctx.ws.id, env)

    def router_address(self, profile: ResolvedProfile) -> str:
        return self.router_agent(profile)[1]

    def placement(self, profile: ResolvedProfile) -> list[str]:
        return place(profile.hosts, profile.instances)

    def each(self, profile: ResolvedProfile, hosts: Sequence[str] | None = None) -> list[Backend]:
        names = list(hosts) if hosts is not None else [h.name for h in profile.hosts]
        return [self.backend(profile, n) for n in names]

    def ready(self, profile: ResolvedProfile, digest: str, hosts: Sequence[str] | None = None) -> None:
        """Every host (of `hosts`, default all) reachable, its engine ready, `digest` shipped, verified
        and unpacked: in parallel, before anything changes anywhere. One error names every host that
        failed."""
        backends = self.each(profile, hosts)
        self._parallel(backends, lambda b: b.check(), "checking")
        if profile.router is not None and profile.router.host is not None:
            self.router_ready(profile)
        from sandbox.hosts.ship import ship

        ship(
            self.ctx.store,
            on_host(backends[0]).ships(digest),
            [host_agent(b).transport for b in backends],
            lambda t: self._agent_for(backends, t.name).prefix(),
            self.ctx.sink,
            compression=self.ctx.settings.hosts.compression,
        )
        self._parallel(backends, lambda b: b.prepare_image(digest), "unpacking the image on")

    def router_ready(self, profile: ResolvedProfile) -> None:
        """The router host answers and has nginx with its Lua module (else nothing is made)."""
        agent, _ = self.router_agent(profile)
        items = agent.call("host-check", "router")
        bad = [i for i in items if i.get("item") == "nginx" and not i.get("ok")]
        if bad:
            raise HostError(
                f"router host {agent.name} lacks nginx with its Lua module",
                hint=f"{bad[0].get('fix')} on {agent.name}, or `sandbox host prepare {profile.name}`",
                host=agent.name,
            )

    @staticmethod
    def _agent_for(backends: Sequence[Backend], name: str) -> HostAgent:
        return next(host_agent(b) for b in backends if host_agent(b).name == name)

    def _parallel(self, backends: Sequence[Backend], fn: Callable[[Backend], object], what: str) -> None:
        failures: list[str] = []

        def one(b: Backend) -> None:
            host = host_agent(b).name
            try:
                fn(b)
            except SandboxError as e:
                failures.append(e.message if host in e.message else f"host {host}: {e.message}")
                if len(backends) == 1:
                    raise

        if len(backends) == 1:
            one(backends[0])
            return
        with ThreadPoolExecutor(max_workers=min(8, len(backends))) as pool:
            list(pool.map(one, backends))
        if failures:
            raise HostError(
                f"{what} {len(failures)} of {len(backends)} hosts failed: " + "; ".join(sorted(failures)),
                hint="`sandbox host check PROFILE` shows what each host lacks",
            )


def _address(t: SshTransport) -> str:
    """The IPv4 address the router reaches a host at: its ssh HostName, resolved once."""
    name = t.effective().get("hostname", t.target.host)
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise HostError(
            f"host {t.name}: cannot resolve {name!r}: {e}",
            hint="give the host an `address:` in the profile",
        ) from e
    return str(infos[0][4][0])


def is_hosted(backend: Backend) -> bool:
    return isinstance(backend, OnHost)


def on_host(backend: Backend) -> OnHost:
    assert isinstance(backend, OnHost), backend
    return backend


def host_agent(backend: Backend) -> HostAgent:
    """The host agent of a backend on a host."""
    return on_host(backend).agent


#: what is missing of the packages in "$@" (dpkg's own status), installed with the host's apt only
#: then (a prepared host needs no package index, so a second `host prepare` works offline); the last
#: line says what was installed: "installed: NAME..." (empty: nothing was missing)
INSTALL = (
    'missing=""; for p in "$@"; do '
    "dpkg-query -W -f='${db:Status-Status}' \"$p\" 2>/dev/null | grep -qx installed "
    '|| missing="$missing $p"; done; '
    'if [ -n "$missing" ]; then export DEBIAN_FRONTEND=noninteractive; '
    "apt-get update -q >&2 && apt-get install -y -q --no-install-recommends $missing >&2 || exit 1; fi; "
    'echo "installed:$missing"'
)
#: what each engine needs on a host (python3 runs the host agent, zstd unpacks what is shipped)
ENGINE_PACKAGES = {
    "lxc": "lxc uidmap iptables iproute2 python3 zstd",
    "docker": "docker.io python3 zstd",
    "libvirt": "libvirt-daemon-system qemu-system-x86 qemu-utils e2fsprogs iptables iproute2 python3 zstd",
    "lxd": "lxd iptables python3 zstd",
}
#: docker's engine, libvirtd and LXD run as services: started (and enabled) once installed
START_ENGINE = {
    "docker": "(systemctl enable --now docker || service docker start) >/dev/null 2>&1 || true",
    "libvirt": "(systemctl enable --now libvirtd || service libvirtd start) >/dev/null 2>&1 || true",
    # (an LXD that does not come up: lxd-init, next, says so)
    "lxd": "(systemctl enable --now lxd || service lxd start) >/dev/null 2>&1; "
    "lxd waitready --timeout=120 || true",
}
#: the host agent's op that sets an engine up once it runs (LXD: a storage pool and a root disk)
SETUP_OP = {"lxd": "lxd-init"}
ROUTER_PACKAGES = "nginx-light libnginx-mod-http-lua"


def _machines(hosts: EnvHosts, profile: ResolvedProfile) -> list[tuple[HostSpec, HostAgent, str]]:
    """Every machine of `profile`: its hosts, then its router host; (spec, agent, role), the role
    "instances", "instances+router" or "router"."""
    out = []
    router = profile.router.host if profile.router is not None else None
    for h in profile.hosts:
        role = "instances+router" if h.name == router else "instances"
        out.append((h, host_agent(hosts.backend(profile, h.name)), role))
    if router is not None and router not in {h.name for h in profile.hosts}:
        out.append((hosts.router_spec(profile), hosts.router_agent(profile)[0], "router"))
    return out


def _check_args(profile: ResolvedProfile, role: str) -> list[str]:
    """The host agent's `host-check` arguments for a machine in `role`."""
    args = [profile.backend] if profile.backend in ("docker", "lxd", "libvirt") and role != "router" else []
    if role == "router":
        args.append("router-only")
    return args + (["router"] if "router" in role else [])


def check_hosts(ctx: EnvContext, profile: ResolvedProfile) -> list[dict[str, object]]:
    """Per machine of `profile`: reachable (host key, login, sudo), then what the host agent finds
    (the router host: nginx too)."""

    def one(m: tuple[HostSpec, HostAgent, str]) -> dict[str, object]:
        h, agent, role = m
        items: list[dict[str, object]] = []
        try:
            agent.ensure()
            items.append({"item": "ssh", "ok": True, "detail": f"{h.ssh}, host key known", "fix": None})
            items += agent.call("host-check", *_check_args(profile, role))
        except HostError as e:
            items.append({"item": "ssh", "ok": False, "detail": e.message, "fix": e.hint})
        ok = all(i["ok"] for i in items)
        return {"host": h.name, "ssh": h.ssh, "role": role, "ok": ok, "checks": items}

    machines = _machines(EnvHosts(ctx), profile)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(machines)))) as pool:
        return list(pool.map(one, machines))


def prepare_hosts(ctx: EnvContext, profile: ResolvedProfile) -> list[dict[str, object]]:
    """Install what sandbox needs with each machine's apt (the router host: nginx and its Lua module
    too), then set the instance hosts up (bridge, ids, limits)."""
    hosts = EnvHosts(ctx)

    def one(m: tuple[HostSpec, HostAgent, str]) -> dict[str, object]:
        h, agent, role = m
        packages = ENGINE_PACKAGES.get(profile.backend, "") if role != "router" else "python3"
        if "router" in role:
            packages += f" {ROUTER_PACKAGES}"
        script = INSTALL
        if role != "router" and profile.backend in START_ENGINE:
            script += f" && {{ {START_ENGINE[profile.backend]}; }}"
        try:
            p = agent.transport.run(["sh", "-c", script, "install", *packages.split()], timeout=1800)
        except HostError as e:
            detail = f"{e.message} ({e.hint})" if e.hint else e.message
            return {"host": h.name, "ok": False, "installed": [], "detail": detail}
        if p.returncode != 0:
            tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
            detail = "apt-get failed: " + " / ".join(tail)
            return {"host": h.name, "ok": False, "installed": [], "detail": detail}
        lines = p.stdout.decode(errors="replace").strip().splitlines()
        installed = lines[-1].removeprefix("installed:").split() if lines else []
        try:
            if role != "router" and profile.backend in SETUP_OP:
                agent.call(SETUP_OP[profile.backend], timeout=300)
            if h.name in {x.name for x in profile.hosts}:
                hosts.backend(profile, h.name).check()
            else:
                agent.ensure()
        except SandboxError as e:
            return {"host": h.name, "ok": False, "installed": installed, "detail": e.message}
        done = f"installed {' '.join(installed)}" if installed else "every package was there"
        return {"host": h.name, "ok": True, "installed": installed, "detail": f"{done}; ready"}

    machines = _machines(hosts, profile)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(machines)))) as pool:
        return list(pool.map(one, machines))
