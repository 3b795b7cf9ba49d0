"""Environments on real LXC behind real nginx: up, health, exec, snapshots, clones, TTL, gc, races, crashes.

Everything runs in the session's build workspace with its own bridge, subnet and router ports
(sandbox.yaml below), so it never meets the envs of another workspace on this host. Traffic goes
only to 127.0.0.1 (routers) and to instance addresses in SUBNET; every wait is bounded; every env
made here is removed at the end (`sandbox down` each, then `sandbox gc`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.hostsetup import runtime_ids
from sandbox.workspace import Workspace
from tests.integration.conftest import (
    REPO,
    Built,
    Run,
    exec_in,
    exec_out,
    grant_traverse,
    in_subnet,
    link_exists,
    lxc_names,
    lxc_problem,
    ok,
    require,
    router_pids,
    sandbox,
    shared_cache,
)
from tests.integration.conftest import healthz as shared_healthz
from tests.integration.conftest import http_get as shared_http_get

pytestmark = pytest.mark.integration

BRIDGE = "sbxtest0"
SUBNET = ipaddress.ip_network("10.214.0.0/24")
GATEWAY = next(SUBNET.hosts())
PORTS = range(19000, 19200)
SETTINGS = f"network: {{bridge: {BRIDGE}, subnet: {SUBNET}}}\nrouters: {{port_range: [19000, 19199]}}\n"
STAGING_TTL = 7 * 86400
MADE: set[str] = set()  # every env name a test asked for; the session finalizer downs each
RESTORE: list[tuple[Path, int]] = []  # directory modes to put back at the end


# -- helpers -----------------------------------------------------------------------------------


def sbx(ws: Path, *args: str, timeout: float = 180) -> Run:
    if len(args) > 1 and args[0] in ("up", "clone"):
        MADE.add(args[2] if args[0] == "clone" else args[1])
    return sandbox(ws, *args, timeout=timeout)


def run_in(ws: Path, env: str, *argv: str, user: str | None = None, index: int = 0) -> Run:
    return exec_in(ws, env, *argv, user=user, index=index, timeout=60)


def out(ws: Path, env: str, *argv: str, user: str | None = None) -> str:
    return exec_out(ws, env, *argv, user=user)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return shared_http_get(url, in_subnet(SUBNET), timeout)


def healthz(url: str) -> dict[str, Any]:
    return shared_healthz(url, in_subnet(SUBNET))


def listing(ws: Path) -> dict[str, dict[str, Any]]:
    r = sandbox(ws, "ls", "--json")
    envs: list[dict[str, Any]] = ok(r)
    return {e["name"]: e for e in envs}


def leftovers(ws: Path, env: str) -> list[str]:
    """Anything of env `env` still on the host: instance dirs, router dir, containers, nginx."""
    found = [
        str(d)
        for d in (Workspace(ws).runtime / "lxc").glob(f"{env}-*")
        if re.fullmatch(rf"{env}-\d+", d.name)
    ]
    if (Workspace(ws).runtime / "routers" / env).exists():
        found.append(f"router dir {env}")
    found += [f"container {n}" for n in lxc_names(ws) if re.fullmatch(rf"{env}-\d+", n)]
    found += [f"nginx pid {p}" for p in router_pids(ws, env)]
    return found


def error_line(stderr: str) -> bool:
    """The CLI's one `error: ...` line is there (a warning may come first)."""
    return any(ln.startswith("error: ") for ln in stderr.splitlines())


def addresses(envs: dict[str, dict[str, Any]]) -> list[str]:
    return [i["address"] for e in envs.values() for i in e["instances"]]


def memory_limit(ws: Path, env: str) -> int:
    text = out(
        ws,
        env,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    return int(text)


def gunicorn_processes(ws: Path, env: str) -> list[tuple[int, int]]:
    """(pid, uid) of the app's gunicorn processes, read from /proc inside the instance (no ps there)."""
    script = (
        'for p in /proc/[0-9]*; do [ "${p#/proc/}" = $$ ] && continue; '
        'c=$(tr "\\0" " " < $p/cmdline 2>/dev/null) || continue; '
        'case "$c" in *bin/gunicorn*) echo "${p#/proc/} $(awk \'/^Uid:/{print $2}\' $p/status)";; esac; done'
    )
    lines = out(ws, env, "sh", "-c", script).splitlines()
    return [(int(a), int(b)) for a, b in (ln.split() for ln in lines)]


def down_all(ws: Path, names: set[str]) -> None:
    with contextlib.suppress(AssertionError, ValueError):  # ls itself broken: still down what we know
        names = names | set(listing(ws))
    for name in sorted(names):
        sandbox(ws, "down", name, timeout=120)


def remove_empty_cgroups(instance: str) -> None:
    """rmdir the empty lxc.monitor/lxc.payload cgroups a failed start of `instance` left (a cgroup
    with processes or children cannot be removed, so nothing in use is touched)."""
    for kind in ("monitor", "payload"):
        for d in Path("/sys/fs/cgroup").glob(f"*/lxc.{kind}.{instance}*"):
            if re.fullmatch(rf"lxc\.{kind}\.{re.escape(instance)}(-\d+)?", d.name):
                with contextlib.suppress(OSError):
                    d.rmdir()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def envws(built: Built) -> Iterator[Path]:
    """The build workspace with the shipped profiles and its own network; emptied at the end."""
    require(lxc_problem())
    ws = built.ws
    shutil.copytree(REPO / "profiles", ws / "profiles", dirs_exist_ok=True)
    (ws / "sandbox.yaml").write_text(SETTINGS)
    had_bridge = link_exists(BRIDGE)
    RESTORE.extend(grant_traverse(ws))
    yield ws
    down_all(ws, MADE)
    gc = sandbox(ws, "gc", "--json", timeout=300)
    still = lxc_names(ws, running=True)
    for name in still:  # containers our own test run started; stop them so the host is left clean
        subprocess.run(
            ["lxc-stop", "-P", str(Workspace(ws).runtime / "lxc"), "-n", name, "-k"], timeout=60, check=False
        )
    nginx = router_pids(ws)
    for pid in nginx:  # routers our own test run started
        os.kill(pid, signal.SIGQUIT)
    if not had_bridge and not still and link_exists(BRIDGE):
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    for d, mode in RESTORE:
        os.chmod(d, mode)
    assert gc.code == 0, gc.stdout + gc.stderr
    assert listing(ws) == {} and still == [] and nginx == [], (listing(ws), still, nginx)


@pytest.fixture(autouse=True)
def _reachable(envws: Path) -> None:
    """Again before each test: another pytest session on this host resets /tmp/pytest-of-<user> to 0700."""
    seen = {d for d, _ in RESTORE}
    RESTORE.extend((d, m) for d, m in grant_traverse(envws) if d not in seen)


@dataclass
class Up:
    run: Run
    view: dict[str, Any]
    started: float


@pytest.fixture(scope="module")
def staging1(envws: Path) -> Iterator[Up]:
    t0 = time.time()
    r = sbx(envws, "up", "staging-1", "--wait", "--json")
    yield Up(r, ok(r), t0)
    sandbox(envws, "down", "staging-1")


@pytest.fixture
def healthy(envws: Path, staging1: Up) -> Iterator[Path]:
    """staging-1 healthy before the test, and again after it (a test may stop or restore it)."""
    yield envws
    v = listing(envws).get("staging-1")
    if v is None or v["state"] != "running" or v["health"] != "healthy":
        ok(sandbox(envws, "start", "staging-1", "--wait", "--json"))


# -- 1. up -------------------------------------------------------------------------------------


def test_up_gives_a_healthy_env_behind_its_router(envws: Path, built: Built, staging1: Up) -> None:
    v = staging1.view
    assert (v["name"], v["profile"], v["backend"]) == ("staging-1", "staging", "lxc")
    assert v["state"] == "running" and v["health"] == "healthy"
    assert v["image"] == built.digest  # the profile's recipe, as built
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", v["url"] or "")
    assert m and int(m.group(1)) in PORTS, v["url"]
    [inst] = v["instances"]
    assert inst["name"] == "staging-1-0" and inst["state"] == "running"
    addr = ipaddress.ip_address(inst["address"])
    assert addr in SUBNET and addr != GATEWAY  # our own subnet from sandbox.yaml

    doc = healthz(v["url"])  # through the router
    assert doc["status"] == "ok" and doc["image"] == v["image"] and doc["recipe"] == "web"
    assert doc["env"] == "staging"  # staging's APP_ENV reaches the app, over prod's
    assert healthz(f"http://{addr}:8000/")["image"] == v["image"]  # and straight at the instance
    status, body = http_get(v["url"])
    assert status == 200 and b"Hello from sandbox" in body

    e = listing(envws)["staging-1"]
    owner = os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    assert (e["owner"], e["backend"], e["profile"], e["url"]) == (owner, "lxc", "staging", v["url"])
    assert (e["state"], e["health"], e["image"]) == ("running", "healthy", v["image"])
    assert staging1.started - 1 <= e["created"] <= time.time()
    assert e["expires"] == pytest.approx(e["created"] + STAGING_TTL, abs=2)
    assert e["expires"] == pytest.approx(time.time() + STAGING_TTL, abs=300)


def test_status_probes_each_instance(healthy: Path) -> None:
    s = ok(sandbox(healthy, "status", "staging-1", "--json"))
    assert s["state"] == "running"
    assert [(i["name"], i["health"]) for i in s["instances"]] == [("staging-1-0", "healthy")]
    assert "/healthz" in s["instances"][0]["detail"]
    assert s["events"] and {e["env"] for e in s["events"]} == {"staging-1"}


# -- 2. inside the instance ----------------------------------------------------------------------


def test_exec_as_the_app_user_and_as_root(healthy: Path) -> None:
    assert out(healthy, "staging-1", "id", "-un", user="app") == "app"
    assert out(healthy, "staging-1", "id", "-u", user="app") == "1001"
    assert out(healthy, "staging-1", "sh", "-c", "echo $HOME", user="app") == "/home/app"
    assert out(healthy, "staging-1", "id", "-un") == "root"
    assert out(healthy, "staging-1", "hostname") == "staging-1-0"


def test_cron_job_of_the_recipe_is_installed_and_cron_runs(healthy: Path) -> None:
    cron = out(healthy, "staging-1", "cat", "/etc/cron.d/app-cleanup")
    assert "*/15 * * * * app python3 /srv/app/manage.py cleanup" in cron
    deadline, state = time.monotonic() + 20, ""
    for _ in range(100):  # cron may still be starting right after boot
        state = run_in(healthy, "staging-1", "systemctl", "is-active", "cron").stdout.strip()
        if state == "active" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == "active"


def test_container_root_is_not_host_root(healthy: Path) -> None:
    uids, _ = runtime_ids(Workspace(healthy).runtime)  # the range recorded for this workspace
    assert uids.start > 0
    assert out(healthy, "staging-1", "cat", "/proc/self/uid_map").split() == [
        "0",
        str(uids.start),
        str(uids.count),
    ]
    assert out(healthy, "staging-1", "cat", "/proc/self/gid_map").split()[:2] == ["0", str(uids.start)]
    # seen from the host, the instance's init runs as the subordinate uid, not as 0
    p = subprocess.run(
        ["lxc-info", "-P", str(Workspace(healthy).runtime / "lxc"), "-n", "staging-1-0", "-p", "-H"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status = Path(f"/proc/{int(p.stdout)}/status").read_text()
    host_uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
    assert host_uid == uids.start


def test_the_app_runs_as_its_non_root_user_with_the_profile_env(healthy: Path) -> None:
    procs = gunicorn_processes(healthy, "staging-1")
    assert len(procs) >= 3, procs  # master + 2 workers (recipe: --workers 2)
    assert {uid for _, uid in procs} == {1001}
    environ = out(healthy, "staging-1", "sh", "-c", f"tr '\\0' '\\n' < /proc/{procs[0][0]}/environ")
    assert "APP_ENV=staging" in environ.splitlines()  # staging's env overrides prod's
    assert "SANDBOX_ENV=staging-1" in environ.splitlines()
    assert "SANDBOX_INSTANCE=staging-1-0" in environ.splitlines()


def test_profile_resources_are_applied(healthy: Path) -> None:
    assert memory_limit(healthy, "staging-1") == 512 << 20  # prod's 512M, inherited by staging


def test_profile_mounts_a_file_read_only_and_a_directory_with_a_space_read_write(envws: Path) -> None:
    uids, _ = runtime_ids(Workspace(envws).runtime)
    data = envws / "mnt-data"
    shared = data / "shared dir"
    shared.mkdir(parents=True)
    (data / "app.ini").write_text("[app]\nmode = test\n")
    (shared / "from-host.txt").write_text("host\n")
    for owned in (shared, data / "app.ini"):  # container root owns them: only `readonly` stops writes
        os.chown(owned, uids.start, uids.start)
    profile = envws / "profiles" / "mnt.yaml"
    profile.write_text(
        "name: mnt\nextends: staging\nmounts:\n"
        "  - {src: mnt-data/app.ini, dest: /etc/app.ini, readonly: true}\n"
        "  - {src: mnt-data/shared dir, dest: /srv/shared dir}\n"
    )
    try:
        ok(sbx(envws, "up", "mnt-1", "--json"))
        assert out(envws, "mnt-1", "cat", "/etc/app.ini") == "[app]\nmode = test"
        r = run_in(envws, "mnt-1", "sh", "-c", "echo x >> /etc/app.ini")
        assert r.code != 0 and "read-only file system" in r.stderr.lower(), r.stderr
        assert out(envws, "mnt-1", "cat", "/srv/shared dir/from-host.txt") == "host"
        ok(run_in(envws, "mnt-1", "sh", "-c", "echo inside > '/srv/shared dir/from-instance.txt'"))
        assert (shared / "from-instance.txt").read_text() == "inside\n"
        assert (data / "app.ini").read_text() == "[app]\nmode = test\n"
    finally:
        sandbox(envws, "down", "mnt-1")
        profile.unlink()
        shutil.rmtree(data)
    assert leftovers(envws, "mnt-1") == []


def test_exec_exit_codes_propagate(healthy: Path) -> None:
    assert run_in(healthy, "staging-1", "true").code == 0
    assert run_in(healthy, "staging-1", "false").code == 1
    assert run_in(healthy, "staging-1", "sh", "-c", "exit 7").code == 7
    r = sandbox(healthy, "exec", "staging-1", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.code == 3
    assert r.json == {"code": 3, "stdout": "out\n", "stderr": "err\n"}


# -- 3. snapshot and restore -------------------------------------------------------------------


def test_restore_brings_back_the_snapshot(healthy: Path) -> None:
    ok(run_in(healthy, "staging-1", "sh", "-c", "echo kept > /root/before-snapshot"))
    assert ok(sandbox(healthy, "snapshot", "staging-1", "s1", "--json")) == {
        "env": "staging-1",
        "snapshot": "s1",
    }
    ok(run_in(healthy, "staging-1", "sh", "-c", "echo later > /root/marker"))
    assert out(healthy, "staging-1", "cat", "/root/marker") == "later"

    v = ok(sandbox(healthy, "restore", "staging-1", "s1", "--json"))
    assert v["state"] == "running"
    assert run_in(healthy, "staging-1", "test", "-e", "/root/marker").code == 1  # gone
    assert out(healthy, "staging-1", "cat", "/root/before-snapshot") == "kept"

    v = ok(sandbox(healthy, "start", "staging-1", "--wait", "--json"))
    assert (v["state"], v["health"]) == ("running", "healthy")
    s = ok(sandbox(healthy, "status", "staging-1", "--json"))
    assert [i["health"] for i in s["instances"]] == ["healthy"]
    assert healthz(v["url"])["image"] == v["image"]


def test_a_snapshot_name_is_used_once(healthy: Path) -> None:
    ok(sandbox(healthy, "snapshot", "staging-1", "once"))
    r = sandbox(healthy, "snapshot", "staging-1", "once")
    assert r.code == 1 and error_line(r.stderr) and "once" in r.stderr


def test_a_duplicate_snapshot_name_gets_a_hint(healthy: Path) -> None:
    ok(sandbox(healthy, "snapshot", "staging-1", "twice"))
    r = sandbox(healthy, "snapshot", "staging-1", "twice")
    assert r.code == 1 and error_line(r.stderr) and "hint:" in r.stderr


@pytest.mark.parametrize("name", ["../../escaped-snap", "a/../../escaped-snap", "has space"])
def test_an_invalid_snapshot_name_is_refused_and_writes_nothing(healthy: Path, name: str) -> None:
    escaped = Workspace(healthy).runtime / "lxc" / "escaped-snap"
    snaps = Workspace(healthy).runtime / "lxc" / "staging-1-0" / "snaps"
    before = sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []
    r = sandbox(healthy, "snapshot", "staging-1", name)
    try:
        assert r.code == 1 and error_line(r.stderr) and "hint:" in r.stderr, r.stderr
        assert not escaped.exists()
        assert (sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []) == before
        r = sandbox(healthy, "restore", "staging-1", name)
        assert r.code == 1 and error_line(r.stderr), r.stderr
    finally:
        if escaped.exists():
            shutil.rmtree(escaped)


# -- 4. clone ----------------------------------------------------------------------------------


def test_clone_copies_the_data_not_the_identity(healthy: Path, staging1: Up) -> None:
    ok(run_in(healthy, "staging-1", "sh", "-c", "echo from-source > /root/cloned"))
    try:
        c = ok(sbx(healthy, "clone", "staging-1", "staging-2", "--wait", "--json"))
        src = listing(healthy)["staging-1"]
        assert (c["name"], c["state"], c["health"]) == ("staging-2", "running", "healthy")
        assert c["image"] == src["image"]
        assert c["instances"][0]["address"] != src["instances"][0]["address"]
        assert ipaddress.ip_address(c["instances"][0]["address"]) in SUBNET
        assert c["url"] != src["url"] and int(c["url"].rsplit(":", 1)[1].strip("/")) in PORTS
        assert out(healthy, "staging-2", "cat", "/root/cloned") == "from-source"
        assert out(healthy, "staging-2", "hostname") == "staging-2-0"
        assert 'SANDBOX_ENV="staging-2"' in out(healthy, "staging-2", "cat", "/etc/sandbox/instance.env")
        assert healthz(c["url"])["image"] == src["image"]
        # the two are independent from now on
        ok(run_in(healthy, "staging-2", "sh", "-c", "echo only-clone > /root/cloned"))
        assert out(healthy, "staging-1", "cat", "/root/cloned") == "from-source"

        d = ok(sandbox(healthy, "diff", "staging-1", "staging-2", "--json"))
        assert d["same_image"] is True and d["config"] == []
        assert d["image"]["identical"] is True
    finally:
        sandbox(healthy, "down", "staging-2")
    assert leftovers(healthy, "staging-2") == []


def test_planted_links_never_reach_the_host(healthy: Path, staging1: Up, tmp_path: Path) -> None:
    """Issue 10: `ln -sf /host/file /etc/hostname; sandbox clone` must not rewrite the host file, and
    a linked /etc/sandbox/app.env must not carry a host file's lines into `sandbox exec`."""
    host_file, secret = tmp_path / "hostname", tmp_path / "secret.env"
    host_file.write_text("the-host\n")
    secret.write_text('HOST_SECRET="stolen"\n')
    os.chmod(tmp_path, 0o755)
    plant = (
        f"cp /etc/sandbox/app.env /root/app.env.orig && ln -sf {host_file} /etc/hostname"
        f" && ln -sf {secret} /etc/sandbox/app.env"
    )
    ok(run_in(healthy, "staging-1", "sh", "-c", plant))
    try:
        assert "HOST_SECRET" not in out(healthy, "staging-1", "env")
        ok(sbx(healthy, "clone", "staging-1", "staging-3", "--wait", "--json"))
        assert host_file.read_text() == "the-host\n"
        assert (host_file.stat().st_uid, stat.S_IMODE(host_file.stat().st_mode)) == (0, 0o644)
        assert out(healthy, "staging-3", "cat", "/etc/hostname") == "staging-3-0"
        assert "HOST_SECRET" not in out(healthy, "staging-3", "env")
    finally:
        sandbox(healthy, "down", "staging-3")
        run_in(healthy, "staging-1", "sh", "-c",
               "rm -f /etc/hostname /etc/sandbox/app.env && echo staging-1-0 > /etc/hostname"
               " && mv /root/app.env.orig /etc/sandbox/app.env")  # fmt: skip


# -- 10. stop and start ------------------------------------------------------------------------


def test_stop_then_start(healthy: Path) -> None:
    url = listing(healthy)["staging-1"]["url"]
    v = ok(sandbox(healthy, "stop", "staging-1", "--json"))
    assert v["state"] == "stopped" and [i["state"] for i in v["instances"]] == ["stopped"]
    assert listing(healthy)["staging-1"]["state"] == "stopped"
    assert lxc_names(healthy, running=True).count("staging-1-0") == 0
    assert router_pids(healthy, "staging-1") == []
    with pytest.raises(urllib.error.URLError):
        http_get(url, timeout=2)
    assert run_in(healthy, "staging-1", "true").code != 0

    v = ok(sandbox(healthy, "start", "staging-1", "--wait", "--json"))
    assert (v["state"], v["health"], v["url"]) == ("running", "healthy", url)
    assert [i["state"] for i in v["instances"]] == ["running"]
    assert healthz(url)["status"] == "ok"


# -- 5. TTL and gc -----------------------------------------------------------------------------


def test_an_expired_env_is_listed_as_such_and_gc_removes_it(envws: Path, staging1: Up) -> None:
    v = ok(sbx(envws, "up", "dev-1", "--ttl", "2s", "--json"))
    assert v["profile"] == "dev" and v["state"] == "running"
    assert v["expires"] == pytest.approx(v["created"] + 2, abs=0.5)
    time.sleep(min(10.0, max(0.0, v["expires"] + 1 - time.time())))
    assert listing(envws)["dev-1"]["state"] == "expired"

    g = ok(sandbox(envws, "gc", "--json"))
    assert "dev-1" in g["removed_envs"] and "staging-1" not in g["removed_envs"]
    now = listing(envws)
    assert "dev-1" not in now and now["staging-1"]["state"] == "running"
    assert leftovers(envws, "dev-1") == []


# -- 6. quota ----------------------------------------------------------------------------------


def test_max_per_owner(envws: Path) -> None:
    mine = ["dev-a", "dev-b", "dev-c"]
    try:
        for name in mine:
            assert ok(sbx(envws, "up", name, "--owner", "t", "--json"))["owner"] == "t"
        assert memory_limit(envws, "dev-a") == 256 << 20  # dev's own memory over staging's/prod's
        before = listing(envws)
        r = sbx(envws, "up", "dev-d", "--owner", "t")
        assert r.code == 1
        assert error_line(r.stderr) and "allows 3 per owner" in r.stderr
        assert "hint:" in r.stderr and all(n in r.stderr for n in mine)
        assert listing(envws).keys() == before.keys()
        assert (
            ok(sbx(envws, "up", "dev-d", "--owner", "u", "--json"))["owner"] == "u"
        )  # others are not limited
    finally:
        for name in [*mine, "dev-d"]:
            sandbox(envws, "down", name)
    for name in [*mine, "dev-d"]:
        assert leftovers(envws, name) == []


# -- 7. concurrent ups -------------------------------------------------------------------------


def _cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sandbox", "-C", str(ws), *args]


ENV = {**os.environ, "SANDBOX_CACHE": str(shared_cache())}
RACE = ["staging-10", "staging-11", "staging-12", "staging-12"]


def _race_round(ws: Path) -> None:
    MADE.update(RACE)
    procs = [
        subprocess.Popen(
            _cli(ws, "up", n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )
        for n in RACE
    ]
    results: list[tuple[int, str]] = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    (c10, e10), (c11, e11), (ca, ea), (cb, eb) = results
    assert (c10, c11) == (0, 0), (e10, e11)
    assert sorted((ca, cb)) == [0, 1], (ea, eb)
    loser = ea if ca == 1 else eb
    assert "already exists" in loser and "hint:" in loser
    envs = listing(ws)
    assert all(envs[n]["state"] == "running" for n in RACE), {n: envs[n]["state"] for n in RACE}
    addrs = addresses(envs)
    assert len(addrs) == len(set(addrs)), addrs
    urls = [e["url"] for e in envs.values()]
    assert len(urls) == len(set(urls)), urls


def test_concurrent_ups(envws: Path, staging1: Up) -> None:
    """Two names at once both succeed; the same name twice: exactly one wins. Two rounds."""
    for _ in range(2):
        try:
            _race_round(envws)
        finally:
            for name in sorted(set(RACE)):
                sandbox(envws, "down", name)
            sandbox(envws, "gc")
        for name in set(RACE):
            assert leftovers(envws, name) == []


# -- 8. kill -9 during up ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "moment"),
    [("staging-20", "lxc/staging-20-0"), ("staging-21", "routers/staging-21")],
    ids=["instance-dir", "router-dir"],
)
def test_kill_9_during_up_is_visible_and_gc_cleans_it(
    envws: Path, staging1: Up, name: str, moment: str
) -> None:
    MADE.add(name)
    target = Workspace(envws).runtime / moment
    proc = subprocess.Popen(
        _cli(envws, "up", name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not target.exists():
            time.sleep(0.002)
        assert proc.poll() is None, f"`up` ended (exit {proc.returncode}) before {moment} appeared"
        assert target.exists(), f"{moment} did not appear within 60s"
    finally:
        proc.kill()
        proc.wait(10)

    e = listing(envws).get(name)
    assert e is not None, "a killed `up` must not be hidden from `sandbox ls`"
    assert e["state"] == "crashed during up"
    g = ok(sandbox(envws, "gc", "--json"))
    assert name in g["removed_envs"] and "staging-1" not in g["removed_envs"]
    assert name not in listing(envws)
    assert leftovers(envws, name) == []
    assert healthz(listing(envws)["staging-1"]["url"])["status"] == "ok"  # the others are untouched


# -- 9. bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words", "hint"),
    [
        (("up", "Staging_1"), ["invalid environment name"], True),
        (("up", "nosuch-1"), ["profile 'nosuch' not found"], True),
        (("up", "staging-1"), ["already exists"], True),
        (("up", "staging-6", "--image", "sha256:deadbeef"), ["not found"], True),
        (("down", "staging-99"), ["'staging-99' not found"], True),
        (("exec", "staging-1", "-i", "5", "--", "true"), ["has no instance 5"], True),
        (("exec", "staging-1", "-u", "nosuchuser", "--", "true"), ["nosuchuser"], False),
        (("exec", "nosuch-1", "--", "true"), ["not found"], True),
        (("restore", "staging-1", "nosnap"), ["snapshot 'nosnap'"], True),
        (("clone", "nosuch-1", "staging-9"), ["'nosuch-1' not found"], True),
        (("status", "staging-98"), ["not found"], True),
        (("up", "staging-5", "--ttl", "banana"), ["invalid duration 'banana'"], True),
        (("up", "staging-5", "--ttl", "-5s"), ["-5s"], True),
        (("up", "staging-5", "--ttl", "4 hours"), ["4 hours"], True),
        (("up", "staging-5", "--ttl", "0"), ["--ttl '0'"], True),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_input_is_one_clear_error_and_changes_nothing(
    healthy: Path, args: tuple[str, ...], words: list[str], hint: bool
) -> None:
    before = listing(healthy)
    r = sbx(healthy, *args)
    try:
        assert r.code == 1, f"exit {r.code}: {r.stderr}"
        assert error_line(r.stderr), r.stderr
        assert all(w.lower() in r.stderr.lower() for w in words), r.stderr
        if hint:
            assert "\nhint:" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert listing(healthy) == before
    finally:
        for name in set(listing(healthy)) - set(before):
            sandbox(healthy, "down", name)


def test_a_workspace_container_root_cannot_reach_gets_a_clear_hint(healthy: Path) -> None:
    parent = healthy.parent  # made by this test session (tmp_path_factory)
    before = listing(healthy)
    mode = stat.S_IMODE(parent.stat().st_mode)
    os.chmod(parent, 0o700)
    try:
        r = sbx(healthy, "up", "staging-40")
    finally:
        os.chmod(parent, mode)
    try:
        assert r.code == 1 and error_line(r.stderr), r.stderr
        hint = [ln for ln in r.stderr.splitlines() if ln.startswith("hint:")]
        assert hint and str(parent) in hint[0], r.stderr
        assert listing(healthy) == before and leftovers(healthy, "staging-40") == []
    finally:
        sandbox(healthy, "down", "staging-40")
        remove_empty_cgroups("staging-40-0")  # lxc-start leaks its monitor cgroup when a start fails


def test_a_profile_with_unknown_keys_is_reported_with_file_and_line(healthy: Path) -> None:
    path = healthy / "profiles" / "typo.yaml"
    path.write_text("name: typo\nextends: staging\ninstancs: 2\nttl: banana\n")
    before = listing(healthy)
    try:
        r = sbx(healthy, "up", "typo-1")
    finally:
        path.unlink()
    assert r.code == 1 and error_line(r.stderr), r.stderr
    assert "profiles/typo.yaml:3" in r.stderr and "instancs" in r.stderr and "'instances'" in r.stderr
    assert "profiles/typo.yaml:4" in r.stderr and "ttl" in r.stderr  # every problem at once
    assert listing(healthy) == before
