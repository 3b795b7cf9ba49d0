"""The host agent: its bundle (a deterministic zipapp of sandbox's code, without the CLI), installing
it once on a host and calling it (HostAgent over LocalTransport, the bundle run by `python3`), the
`lxc` op refusing every malformed request before it touches anything, the publishing rules' checks,
and the published port of an instance's address.

Nothing here runs iptables or lxc, nor writes outside the test's tmp dir: the agent's root is
SANDBOX_HOST_ROOT, its install dir AGENT_DIR, both under tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from sandbox.errors import SandboxError
from sandbox.hostagent import publish
from sandbox.hosts import agent as agent_mod
from sandbox.hosts.agent import MISSING, HostAgent, bundle
from sandbox.hosts.agentcall import AgentError
from sandbox.hosts.publishing import published_port
from sandbox.hosts.transport import HostError, LocalTransport

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


# -- the bundle ----------------------------------------------------------------------------------


def test_the_bundle_is_deterministic_and_holds_the_agent_but_not_the_cli() -> None:
    sha, data = bundle.__wrapped__()
    sha2, data2 = bundle.__wrapped__()
    assert data == data2 and sha == sha2 and (sha, data) == bundle()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names[0] == "__main__.py"
    for must in (
        "sandbox/hostagent/main.py",
        "sandbox/hostagent/lxcops.py",
        "sandbox/backends/lxc.py",
        "sandbox/hostagent/libvirtops.py",
        "sandbox/backends/vmfiles.py",
    ):
        assert must in names, must
    assert not [n for n in names if n.startswith(("sandbox/cli/", "sandbox/web/", "sandbox/templates/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert names == sorted(names[:1]) + sorted(names[1:])  # a fixed order, whatever the file system says
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


# -- HostAgent over a local transport ------------------------------------------------------------


class Recording(LocalTransport):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[list[str]] = []
        self.codes: list[int] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(argv))
        p = super().run(argv, input=input, stdin=stdin, timeout=timeout)
        self.codes.append(p.returncode)
        return p


@pytest.fixture
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "host" / "agent"
    monkeypatch.setattr(agent_mod, "AGENT_DIR", str(d))
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "host"))
    if shutil.which("python3") is None:
        pytest.fail("python3 is not on PATH (the agent runs as `python3 AGENT.pyz`)")
    return d


def installs(t: Recording) -> int:
    return sum(1 for c in t.calls if c[:2] == ["sh", "-c"] and "cat >" in c[2])


def test_ensure_installs_the_bundle_once(agent_dir: Path) -> None:
    t = Recording("h1")
    a = HostAgent(t)
    assert a.path.startswith(str(agent_dir) + "/") and a.path.endswith(".pyz")
    ping = a.ensure()
    assert ping["euid"] == os.geteuid() and ping["python"].count(".") == 2
    assert installs(t) == 1 and t.codes[0] == MISSING and len(t.calls) == 3
    installed = Path(a.path)
    assert installed.read_bytes() == bundle()[1]
    assert (installed.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in agent_dir.iterdir()] == [installed.name]  # no temp file left

    assert a.call("ping")["euid"] == os.geteuid()
    again = HostAgent(t)  # the next command: the bundle is there
    again.ensure()
    assert installs(t) == 1
    assert again.call("ping")["python"] == ping["python"]


def test_an_agent_error_names_the_host(agent_dir: Path, tmp_path: Path) -> None:
    a = HostAgent(LocalTransport("h2"))
    with pytest.raises(AgentError) as e:
        a.call("lxc", request={"method": "rm_rf", "args": {}})
    assert e.value.host == "h2" and e.value.kind == "BadRequest"
    assert e.value.message.startswith("host h2: ") and "rm_rf" in e.value.message
    with pytest.raises(AgentError) as e2:
        a.call("no-such-op")
    assert e2.value.kind == "AgentUsage" and e2.value.host == "h2"
    assert not (tmp_path / "host" / "ws").exists()


def test_a_host_without_python3(agent_dir: Path) -> None:
    a = HostAgent(LocalTransport("h3"), python="python3-not-here")
    with pytest.raises(HostError, match="host h3 has no python3") as e:
        a.ensure()
    assert e.value.hint and "host prepare" in e.value.hint


def test_an_agent_dir_that_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(agent_mod, "AGENT_DIR", str(blocker / "agent"))  # a dir under a file
    with pytest.raises(HostError, match="host h4: cannot install") as e:
        HostAgent(LocalTransport("h4")).ensure()
    assert e.value.hint


# -- the lxc op refuses malformed requests ---------------------------------------------------------


def run_op(
    root: Path, request: Any, op: str = "lxc", *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """The agent's `op` on this machine, its root `root` (the request as JSON on stdin)."""
    p = subprocess.run(
        [sys.executable, "-m", "sandbox.hostagent", op, *args],
        input=json.dumps(request).encode(),
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "SANDBOX_HOST_ROOT": str(root), **(env or {})},
        cwd=root.parent,
        timeout=60,
        check=False,
    )
    lines = p.stdout.decode().strip().splitlines()
    return p.returncode, json.loads(lines[-1]) if lines else {}, p.stderr.decode()


CTX = {"ws": "w1", "network": {"bridge": "sbxtest0", "subnet": "10.213.0.0/24"}}
SPEC = {"name": "prod-0", "env": "prod", "index": 0, "image": DIGEST, "address": "10.213.0.2", "env_vars": {}}

BAD = [
    ({"method": "rm_rf"}, "unknown method"),
    ({"method": "__init__"}, "unknown method"),
    ({"method": "_spec"}, "unknown method"),
    ([1, 2], "unknown method"),
    ({"method": "state", "args": {"name": "../x"}}, "bad name"),
    ({"method": "state", "args": {"name": "A"}}, "bad name"),
    ({"method": "state", "args": {"name": "x;y"}}, "bad name"),
    ({"method": "state", "args": {"name": "x\n"}}, "bad name"),
    ({"method": "state", "args": {"name": ["x"]}}, "bad name"),
    ({"method": "start", "args": {}}, "bad name"),
    ({"method": "destroy", "args": {"name": "-rf"}}, "bad name"),
    ({"method": "prepare_image", "args": {"digest": "sha256:xyz"}}, "bad digest"),
    ({"method": "prepare_image", "args": {"digest": DIGEST + "\n"}}, "bad digest"),
    ({"method": "forget_image", "args": {"digest": "../../etc"}}, "bad digest"),
    ({"method": "exec", "args": {"name": "prod-0", "argv": "rm -rf /"}}, "bad argv"),
    ({"method": "exec", "args": {"name": "prod-0", "argv": []}}, "bad argv"),
    ({"method": "exec", "args": {"name": "prod-0", "argv": ["ls", 1]}}, "bad argv"),
    ({"method": "put_file", "args": {"name": "prod-0", "path": "etc/passwd"}}, "bad path"),
    ({"method": "put_file", "args": {"name": "prod-0", "path": 7}}, "bad path"),
    ({"method": "put_file", "args": {"name": "prod-0", "path": "/x", "data": "", "mode": "644"}}, "bad mode"),
    ({"method": "snapshot", "args": {"name": "prod-0", "snap": "../s"}}, "bad snap"),
    ({"method": "create", "args": {"spec": "x"}}, "bad spec"),
    ({"method": "create", "args": {"spec": {**SPEC, "image": "busybox"}}}, "bad image"),
    ({"method": "create", "args": {"spec": {**SPEC, "name": "../../x"}}}, "bad name"),
    ({"method": "create", "args": {"spec": {**SPEC, "index": "0"}}}, "bad index"),
    ({"method": "create", "args": {"spec": {**SPEC, "env_vars": {"A": 1}}}}, "bad env_vars"),
    ({"method": "create", "args": {"spec": {**SPEC, "env_vars": {"A\nB": "1"}}}}, "bad env_vars"),
    ({"method": "create", "args": {"spec": {**SPEC, "address": "10.213.0.2/24\nlxc.x = y"}}}, "bad address"),
    ({"method": "create", "args": {"spec": {**SPEC, "address": "10.9.0.2"}}}, "bad address"),
    (
        {"method": "create", "args": {"spec": {k: v for k, v in SPEC.items() if k != "address"}}},
        "bad address",
    ),
    ({"method": "clone", "args": {"src": "../y", "spec": SPEC}}, "bad src"),
    ({"method": "state", "args": ["name"]}, "bad args"),
    ({"method": "state", "ctx": {"ws": "../../etc"}, "args": {"name": "x"}}, "bad ws"),
    ({"method": "state", "ctx": {"ws": "a/b"}, "args": {"name": "x"}}, "bad ws"),
    (
        {"method": "state", "ctx": {"ws": "w1", "network": {"bridge": "br0\nlxc.x=y"}}, "args": {}},
        "bad bridge",
    ),
    (
        {"method": "state", "ctx": {"ws": "w1", "network": {"subnet": "10.0.0.0/24\n"}}, "args": {}},
        "bad subnet",
    ),
    ({"method": "state", "ctx": {"ws": "w1", "network": "x"}, "args": {}}, "bad network"),
]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(("request_", "error"), BAD, ids=[f"{i}-{e}" for i, (_, e) in enumerate(BAD)])
def test_the_lxc_op_refuses_malformed_requests(tmp_path: Path, request_: Any, error: str) -> None:
    root = tmp_path / "host"
    if isinstance(request_, dict):
        request_ = {"ctx": CTX, **request_}
    before = files_under(tmp_path)
    code, answer, stderr = run_op(root, request_)
    assert code == 3, (answer, stderr)
    assert answer["error"] == "BadRequest" and error in answer["message"], answer
    # at most the workspace's runtime dir under the agent's root; nothing else, nowhere else
    made = [f for f in files_under(tmp_path) if f not in before]
    assert set(made) <= {"host", "host/ws", "host/ws/w1"}, made


def test_nothing_is_made_outside_the_agents_root(tmp_path: Path) -> None:
    """The default root (/var/lib/sandbox-host) is never touched when SANDBOX_HOST_ROOT is set."""
    existed = Path("/var/lib/sandbox-host").exists()
    for req, _ in BAD[:12]:
        run_op(tmp_path / "host", {"ctx": CTX, **req} if isinstance(req, dict) else req)
    assert Path("/var/lib/sandbox-host").exists() == existed
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "x").exists()


# -- publishing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "port", "address", "app_port"),
    [
        ("A", 20001, "10.213.0.1", 8000),
        ("../x", 20001, "10.213.0.1", 8000),
        ("x;y", 20001, "10.213.0.1", 8000),
        ("-j", 20001, "10.213.0.1", 8000),
        ("", 20001, "10.213.0.1", 8000),
        ("prod-0", 0, "10.213.0.1", 8000),
        ("prod-0", 65536, "10.213.0.1", 8000),
        ("prod-0", 20001, "10.213.0.1", 0),
        ("prod-0", 20001, "10.213.0.1", 70000),
        ("prod-0", 20001, "10.213.0.1 ", 8000),
        ("prod-0", 20001, "010.213.0.1", 8000),
        ("prod-0", 20001, "10.213.0.0/24", 8000),
        ("prod-0", 20001, "::1", 8000),
        ("prod-0", 20001, "10.213.0.1 -j ACCEPT", 8000),
        ("prod-0", 20001, "host.example", 8000),
    ],
)
def test_publish_refuses_bad_values(name: str, port: int, address: str, app_port: int) -> None:
    with pytest.raises(publish.PublishError, match="refusing"):
        publish._check(name, port, address, app_port)


def test_publish_accepts_good_values() -> None:
    publish._check("prod-0", 20001, "10.213.0.2", 8000)
    publish._check("a", 65535, "192.168.1.254", 1)


# -- published ports ---------------------------------------------------------------------------------


def test_published_ports_follow_the_address() -> None:
    assert published_port("10.0.0.1", "10.0.0.0/24") == 20001
    assert published_port("10.0.0.254", "10.0.0.0/24") == 20254
    assert published_port("10.0.1.1", "10.0.0.0/16") == 20257


@pytest.mark.parametrize(
    ("address", "subnet"),
    [
        ("10.0.0.0", "10.0.0.0/24"),  # the network address
        ("10.0.0.255", "10.0.0.255/32"),
        ("10.0.1.0", "10.0.0.0/24"),  # past the subnet (its broadcast + 1)
        ("10.0.0.5", "10.0.1.0/24"),  # before it
        ("10.0.200.1", "10.0.0.0/16"),  # offset 51201: past port 65535
    ],
)
def test_published_port_refuses(address: str, subnet: str) -> None:
    with pytest.raises(SandboxError) as e:
        published_port(address, subnet)
    assert address in e.value.message and e.value.hint and "/24" in e.value.hint


def test_the_broadcast_address_is_refused() -> None:
    with pytest.raises(SandboxError):
        published_port("10.0.0.255", "10.0.0.0/24")


def test_a_manifest_patch_that_expands_past_the_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small zstd patch can expand to gigabytes: the host reads at most MAX_MANIFEST bytes of it."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    from sandbox.hostagent import storeops
    from sandbox.store.store import BlobCorrupt

    monkeypatch.setattr(storeops, "MAX_MANIFEST", 1 << 16)
    base = tmp_path / "base.json"
    base.write_bytes(b"{}")
    big = tmp_path / "big"
    big.write_bytes(bytes(1 << 20))
    patch = subprocess.run(
        ["zstd", "-q", "-c", f"--patch-from={base}", str(big)], capture_output=True, check=True
    ).stdout
    assert len(patch) < 1 << 12  # 1 MiB of zeros in a few hundred bytes
    with pytest.raises(BlobCorrupt, match="longer than"):
        storeops._unpatch("sha256:" + "a" * 64, base, patch)
    small = tmp_path / "small.json"
    small.write_bytes(b'{"a":1}')
    ok = subprocess.run(
        ["zstd", "-q", "-c", f"--patch-from={base}", str(small)], capture_output=True, check=True
    )
    assert storeops._unpatch("sha256:" + "a" * 64, base, ok.stdout) == b'{"a":1}'
