"""One real build of recipes/web.yaml (mmdebstrap) shared by the whole integration suite."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def sandbox(
    ws: Path, *args: str, cache: Path | None = None, prefix: tuple[str, ...] = (), timeout: float = 600
) -> Run:
    """Run the real CLI in a subprocess against workspace `ws`."""
    env = {**os.environ, "SANDBOX_CACHE": str(cache or shared_cache())}
    p = subprocess.run(
        [*prefix, sys.executable, "-m", "sandbox", "-C", str(ws), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def shared_cache() -> Path:
    """Package cache kept across test runs (content-addressed, so sharing is safe)."""
    p = Path(os.environ.get("SANDBOX_TEST_CACHE", REPO / ".sandbox" / "test-cache"))
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def edited(path: Path, old: str, new: str) -> Iterator[None]:
    """`path` with `old` replaced by `new` while the block runs, then as it was."""
    original = path.read_text()
    assert old in original, f"{path} no longer contains {old!r}"
    path.write_text(original.replace(old, new))
    try:
        yield
    finally:
        path.write_text(original)


GREETING = 'GREETING = "{{ greeting }}"'


def build_variant(ws: Path, tag: str, timeout: float = 900) -> str:
    """Build `web` of `ws` with its greeting changed to "... (TAG)" (a new app layer only) as tag `tag`;
    the template is put back after. The new image's digest."""
    tpl = ws / "recipes" / "web" / "templates" / "settings.py.j2"
    with edited(tpl, GREETING, f'GREETING = "{{{{ greeting }}}} ({tag})"'):
        r = sandbox(ws, "build", "web", "--tag", tag, "--json", timeout=timeout)
    assert r.code == 0, r.stdout + r.stderr
    digest: str = r.json["digest"]
    return digest


def new_workspace(base: Path, name: str) -> Path:
    ws = base / name
    ws.mkdir()
    shutil.copytree(REPO / "recipes", ws / "recipes", ignore=shutil.ignore_patterns("*.lock"))
    return ws


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below `path` with size and mtime, to show that nothing changed."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_size, int(st.st_mtime_ns))
    return out


def mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


@dataclass
class Built:
    ws: Path
    digest: str
    result: dict[str, Any]
    vm: str | None = None  # its VM flavour, when the store holds one (vm_built)

    def manifest(self) -> dict[str, Any]:
        r = sandbox(self.ws, "image", "inspect", self.digest, "--files", "--json")
        assert r.code == 0, r.stderr
        m: dict[str, Any] = r.json
        return m


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    ws = new_workspace(tmp_path_factory.mktemp("ws"), "main")
    # the build records the workspace's runtime dir (its subordinate id range lives there): keep it
    # inside the workspace, as the env tests expect, by letting container root traverse it first
    restore = grant_traverse(ws)
    try:
        r = sandbox(ws, "build", "web", "--json")
        assert r.code == 0, r.stdout + r.stderr
        yield Built(ws, r.json["digest"], r.json)
    finally:
        for d, mode in restore:
            if d.exists():
                os.chmod(d, mode)
    assert mounts_below(ws) == []


@pytest.fixture(scope="session")
def vm_built(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The session build and its VM flavour (`build --flavour vm`), made once per session in a store
    of its own: a VM test copies it (workspace_like) instead of building the flavour again, which
    costs 25-90 s on a busy 2-core host. Whichever test asks first builds it; the others reuse it."""
    ws = workspace_like(built, tmp_path_factory.mktemp("vm"), "ws")
    r = sandbox(ws, "build", "web", "--flavour", "vm", "--json", timeout=900)
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["digest"] == built.digest  # the same recipe and lock: the same image
    return Built(ws, built.digest, r.json, vm=r.json["flavours"]["vm"])


def grant_traverse(path: Path) -> list[tuple[Path, int]]:
    """o+x on `path` and each parent lacking it: container root (a subordinate uid) must reach the
    rootfs below the workspace, nginx's workers (nobody) its maintenance page, and pytest makes its
    temp dirs 0700. Returns what to restore."""
    changed = []
    for d in [path, *path.parents]:
        mode = stat.S_IMODE(d.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
            changed.append((d, mode))
    return changed


# -- helpers shared by the integration modules ----------------------------------------------------


def promotion_workspace(built: Built, tmp: Path, name: str, prod_port: int, settings: str) -> Path:
    """A copy of the build workspace with the repository's profiles, prod's router on `prod_port`
    and its health timeout cut to 30 s, and `settings` as its sandbox.yaml (its own network)."""
    ws = workspace_like(built, tmp, name)
    shutil.copytree(REPO / "profiles", ws / "profiles")
    prod = ws / "profiles" / "prod.yaml"
    text = prod.read_text()
    assert "  port: 8080\n" in text and "  timeout: 120s\n" in text
    prod.write_text(text.replace("  port: 8080\n", f"  port: {prod_port}\n").replace("120s", "30s"))
    (ws / "sandbox.yaml").write_text(settings)
    return ws


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def clear_workspace(
    ws: Path, envs: Iterable[str], bridge: str, had_bridge: bool, restore: list[tuple[Path, int]]
) -> None:
    """What a test's workspace leaves behind, gone: its envs downed and gc'd, containers of this run
    still running stopped, its routers told to quit (by pid), its bridge deleted when the test
    made it, the modes `grant_traverse` changed restored."""
    for env in envs:
        sandbox(ws, "down", env, timeout=180)
    sandbox(ws, "gc", timeout=180)
    lxc = str(Workspace(ws).runtime / "lxc")
    for name in lxc_names(ws, running=True):
        subprocess.run(["lxc-stop", "-P", lxc, "-n", name, "-k"], timeout=60, check=False)
    for pid in router_pids(ws):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    if not had_bridge and link_exists(bridge):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    for d, mode in restore:
        with contextlib.suppress(OSError):
            os.chmod(d, mode)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback/instances only


def ok(r: Run) -> Any:
    """The command succeeded: its JSON document (or its text output)."""
    assert r.code == 0, f"exit {r.code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.json if r.stdout.lstrip().startswith(("{", "[")) else r.stdout


def exec_in(
    ws: Path, env: str, *argv: str, user: str | None = None, index: int = 0, timeout: float = 120
) -> Run:
    """`sandbox exec ENV -i INDEX [-u USER] -- ARGV`."""
    return sandbox(
        ws, "exec", env, "-i", str(index), *(["-u", user] if user else []), "--", *argv, timeout=timeout
    )


def exec_out(ws: Path, env: str, *argv: str, user: str | None = None, index: int = 0) -> str:
    """The stripped stdout of a command that must succeed in instance `index` of `env`."""
    r = exec_in(ws, env, *argv, user=user, index=index)
    assert r.code == 0, f"{argv}: exit {r.code}: {r.stdout} {r.stderr}"
    return r.stdout.strip()


def http_get(url: str, allowed: Callable[[str], bool], timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `url`, only to 127.0.0.1 or to a host `allowed` says this run created."""
    host = urllib.request.urlparse(url).hostname or ""
    assert host == "127.0.0.1" or allowed(host), f"refusing to send traffic to {url}"
    try:
        with NO_PROXY.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def healthz(url: str, allowed: Callable[[str], bool], timeout: float = 5.0) -> dict[str, Any]:
    status, body = http_get(url.rstrip("/") + "/healthz", allowed, timeout)
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def in_subnet(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Callable[[str], bool]:
    return lambda host: ipaddress.ip_address(host) in subnet


def lxc_names(ws: Path, running: bool = False) -> list[str]:
    """The LXC containers of workspace `ws` (lxc backend)."""
    lxcpath = Workspace(ws).runtime / "lxc"
    if not lxcpath.is_dir():
        return []
    argv = ["lxc-ls", "-P", str(lxcpath), "-1", *(["--running"] if running else [])]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return p.stdout.split()


def router_pids(ws: Path, env: str | None = None) -> list[int]:
    """nginx masters started for this workspace's routers (of `env`, or of any env)."""
    needle = f"{Workspace(ws).runtime / 'routers'}/{env + ' ' if env else ''}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmd.startswith(b"nginx: master") and needle in cmd:
                pids.append(int(p.name))
    return pids


def workspace_like(built: Built, base: Path, name: str) -> Path:
    """A new workspace with the session build's lock and store (hard links): no rebuild. From
    vm_built, its VM lock too: the VM flavour in that store is then found in the cache, not rebuilt."""
    ws = new_workspace(base, name)
    for lock in ("web.lock", "web.vm.lock") if built.vm else ("web.lock",):
        (ws / "recipes" / lock).write_bytes((built.ws / "recipes" / lock).read_bytes())
    subprocess.run(["cp", "-al", str(built.ws / "images"), str(ws / "images")], check=True)
    return ws


def cert_fingerprint(crt: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate file, as LXD names trusted certificates."""
    out = subprocess.run(
        ["openssl", "x509", "-in", str(crt), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return out.split("=", 1)[-1].strip().replace(":", "").lower()


def require(problem: str | None) -> None:
    """A missing daemon or tool: a failure in CI, a skip elsewhere."""
    from tests.conftest import integration_required

    if problem is not None:
        if integration_required():
            pytest.fail(problem)
        pytest.skip(problem)


def lxc_problem() -> str | None:
    """Why the lxc backend and its nginx routers cannot run here (None: they can)."""
    missing = [
        t for t in ("lxc-start", "lxc-attach", "lxc-info", "lxc-ls", "nginx", "ip") if not shutil.which(t)
    ]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install lxc nginx-light iproute2)"
    if not Path("/proc/self/ns/user").exists():
        return "the kernel has no user namespaces"
    return None


def libvirt_problem() -> str | None:
    """Why libvirtd (and what VMs and their routers need) cannot be used here (None: it can)."""
    missing = [t for t in ("virsh", "qemu-img", "mkfs.ext4", "nginx") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/backends.sh libvirt)"
    try:
        p = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "libvirtd does not answer (scripts/backends.sh libvirt)"
    return None if p.returncode == 0 else "libvirtd is not running (scripts/backends.sh libvirt)"


def docker_problem() -> str | None:
    """Why dockerd cannot be used here (None: `docker info` answers)."""
    try:
        p = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker does not answer ({e}); scripts/backends.sh docker"
    return None if p.returncode == 0 else "dockerd is not running (scripts/backends.sh docker)"


# -- test hosts: several "machines" on this one (scripts/testhosts.sh) ----------------------------

TESTHOSTS = REPO / "scripts" / "testhosts.sh"
TESTHOSTS_NET = ipaddress.ip_network("10.250.0.0/24")


def testhosts_problem() -> str | None:
    """Why the multi-host rig cannot run here (None: it can)."""
    tools = ("ip", "nsenter", "unshare", "setsid", "setpriv", "ssh", "ssh-keygen")
    missing = [t for t in (*tools, "/usr/sbin/sshd") if not shutil.which(t)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install openssh-server iproute2 util-linux)"
    return None


@dataclass
class HostRig:
    """The rig that `scripts/testhosts.sh up` made: host i (1-based) is sbxh{i} at 10.250.0.1{i}."""

    __test__ = False
    dir: Path
    ssh_config: Path
    hosts: list[dict[str, Any]]

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run scripts/testhosts.sh ARGS on this rig; it must succeed."""
        p = subprocess.run(
            [str(TESTHOSTS), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "TESTHOSTS_DIR": str(self.dir)},
            timeout=timeout,
            check=False,
        )
        assert p.returncode == 0, f"testhosts.sh {' '.join(args)}: exit {p.returncode}\n{p.stdout}{p.stderr}"
        return p

    def cut(self, i: int) -> None:
        """Take host i off the network: to this machine it is as good as dead."""
        self.script("cut", str(i))

    def heal(self, i: int) -> None:
        self.script("heal", str(i))

    def stop_sshd(self, i: int) -> None:
        """Stop host i's sshd (by its pid file): new connections are refused, open sessions live on."""
        self.script("stop-sshd", str(i), str(self.dir))

    def start_sshd(self, i: int) -> None:
        self.script("start-sshd", str(i), str(self.dir))

    def exec(self, i: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside host i's namespaces (not over ssh); the caller checks the result."""
        return subprocess.run(
            [str(TESTHOSTS), "exec", str(i), *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "TESTHOSTS_DIR": str(self.dir)},
            timeout=timeout,
            check=False,
        )

    def ssh(
        self, target: str, *argv: str, options: tuple[str, ...] = (), timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`ssh -F ssh_config [OPTIONS] TARGET ARGV` (strict host-key checking); the caller checks the
        result. ARGV is joined by ssh and parsed by the host's shell."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "ConnectTimeout=3", *options, "--", target, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @staticmethod
    def allowed(host: str) -> bool:
        """For http_get: an address on the rig's network (traffic goes only there or to loopback)."""
        return ipaddress.ip_address(host) in TESTHOSTS_NET


@pytest.fixture(scope="session")
def testhosts() -> Iterator[HostRig]:
    """Three test hosts for the whole session, torn down at its end. Their dir is under /var/lib:
    not /root or pytest's 0700 temp dirs, which container root (uid 100000) cannot traverse."""
    require(testhosts_problem())
    d = Path(f"/var/lib/sandbox-testhosts-{os.getpid()}")
    env = {**os.environ, "TESTHOSTS_DIR": str(d)}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TESTHOSTS), *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )

    try:
        p = script("up", "3", str(d))
        assert p.returncode == 0, f"testhosts.sh up: exit {p.returncode}\n{p.stdout}{p.stderr}"
        hosts = json.loads((d / "hosts.json").read_text())
        yield HostRig(d, d / "ssh_config", hosts)
    finally:
        p = script("down", str(d))
        assert p.returncode == 0, f"testhosts.sh down: exit {p.returncode}\n{p.stdout}{p.stderr}"
