"""state.StateDB: roundtrips, name claims and quotas, cross-process atomicity, allocation, gc inputs."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import EnvExists, EnvNotFound, NotFound, QuotaExceeded, SandboxError, StateError
from sandbox.state import SCHEMA_VERSION, Env, StateDB
from sandbox.workspace import Workspace

FORK = multiprocessing.get_context("fork")
NPROC = 8


def claim(db: StateDB, name: str, owner: str = "alice", profile: str = "dev", **kw: Any) -> Env:
    args: dict[str, Any] = dict(
        profile=profile,
        image="sha256:abc",
        backend="lxc",
        owner=owner,
        config={"instances": 2, "ports": [80]},
        expires=None,
        pid=os.getpid(),
        max_per_owner=None,
    )
    args.update(kw)
    return db.claim_env(name, **args)


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / ".sandbox" / "state.db")


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()  # reaped: the pid is gone
    return p.pid


# -- opening and schema --------------------------------------------------------------------


def test_open_creates_parent_dirs_wal_and_version(tmp_path: Path) -> None:
    db = StateDB.for_workspace(Workspace(tmp_path))
    assert db.path == tmp_path / ".sandbox" / "state.db"
    assert db.path.is_file()
    with sqlite3.connect(db.path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    claim(db, "dev-1")
    assert [e.name for e in StateDB(db.path).list_envs()] == ["dev-1"]  # reopen keeps data


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB(path)
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError) as ei:
        StateDB(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in ei.value.message
    assert ei.value.hint and "upgrade sandbox" in ei.value.hint


def test_garbage_file_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as ei:
        StateDB(path)
    assert ei.value.hint


def test_new_errors_are_sandbox_errors() -> None:
    for cls in (EnvExists, EnvNotFound, QuotaExceeded, StateError):
        assert issubclass(cls, SandboxError)
    assert issubclass(EnvNotFound, NotFound)


# -- envs ----------------------------------------------------------------------------------


def test_env_roundtrip_and_updates(db: StateDB) -> None:
    env = claim(db, "staging-1", profile="staging", expires=2000.0, now=1000.0)
    assert env.state == "creating" and env.health == "unknown"
    assert env.created == env.updated == 1000.0
    assert env.config == {"instances": 2, "ports": [80]}
    assert db.get_env("staging-1") == env
    assert env.age(1060.0) == 60.0
    assert not env.expired(1999.0) and env.expired(2001.0)

    new = db.set_env(
        "staging-1", now=1100.0, state="running", health="healthy", url="http://x:8080/", config={"a": 1}
    )
    assert (new.state, new.health, new.url, new.config, new.updated) == (
        "running",
        "healthy",
        "http://x:8080/",
        {"a": 1},
        1100.0,
    )
    assert new.created == 1000.0 and db.get_env("staging-1") == new
    assert db.set_env("staging-1", expires=None, error="boom").expires is None
    assert new.to_dict()["config"] == {"a": 1}
    with pytest.raises(TypeError):
        db.set_env("staging-1", owner="mallory")


def test_missing_env(db: StateDB) -> None:
    with pytest.raises(EnvNotFound) as ei:
        db.get_env("nope")
    assert ei.value.hint and "sandbox ls" in ei.value.hint
    with pytest.raises(EnvNotFound):
        db.set_env("nope", state="running")
    with pytest.raises(EnvNotFound):
        db.add_instance("nope", 0, "nope-0", "creating")
    with pytest.raises(EnvNotFound):
        db.add_snapshot("nope", "s1", {})
    assert db.delete_env("nope") is False


def test_list_envs_sorted_and_by_owner(db: StateDB) -> None:
    for name, owner in [("dev-b", "bob"), ("dev-a", "alice"), ("dev-c", "alice")]:
        claim(db, name, owner=owner)
    assert [e.name for e in db.list_envs()] == ["dev-a", "dev-b", "dev-c"]
    assert [e.name for e in db.list_envs(owner="alice")] == ["dev-a", "dev-c"]
    assert db.list_envs(owner="carol") == []
    assert db.delete_env("dev-b") is True
    assert [e.name for e in db.list_envs()] == ["dev-a", "dev-c"]


def test_duplicate_claim_says_who_and_how(db: StateDB) -> None:
    claim(db, "dev-1", owner="alice")
    db.set_env("dev-1", state="running")
    with pytest.raises(EnvExists) as ei:
        claim(db, "dev-1", owner="bob")
    assert "alice" in ei.value.message and "running" in ei.value.message
    assert ei.value.hint and "sandbox down dev-1" in ei.value.hint
    assert db.get_env("dev-1").owner == "alice"


def test_quota_per_owner_and_profile(db: StateDB) -> None:
    claim(db, "dev-1", max_per_owner=2)
    claim(db, "dev-2", max_per_owner=2)
    db.set_env("dev-2", state="failed")  # any state counts
    with pytest.raises(QuotaExceeded) as ei:
        claim(db, "dev-3", max_per_owner=2)
    assert ei.value.hint and "dev-1" in ei.value.hint and "dev-2" in ei.value.hint
    claim(db, "dev-4", owner="bob", max_per_owner=2)  # another owner
    claim(db, "staging-1", profile="staging", max_per_owner=2)  # another profile
    claim(db, "dev-5")  # no quota
    db.delete_env("dev-1")
    claim(db, "dev-6", max_per_owner=3)


# -- instances and addresses ---------------------------------------------------------------


def test_instances_roundtrip(db: StateDB) -> None:
    claim(db, "dev-1")
    inst = db.add_instance("dev-1", 0, "dev-1-0", "creating", now=5.0)
    assert (inst.env, inst.idx, inst.name, inst.address, inst.state, inst.created) == (
        "dev-1",
        0,
        "dev-1-0",
        None,
        "creating",
        5.0,
    )
    db.add_instance("dev-1", 1, "dev-1-1", "creating")
    with pytest.raises(StateError):
        db.add_instance("dev-1", 1, "other", "creating")
    with pytest.raises(StateError):
        db.add_instance("dev-1", 2, "dev-1-0", "creating")  # instance names are global
    assert db.set_instance("dev-1", 1, state="running").state == "running"
    with pytest.raises(NotFound):
        db.set_instance("dev-1", 7, state="running")
    with pytest.raises(TypeError):
        db.set_instance("dev-1", 1, created=1.0)
    assert [i.idx for i in db.instances("dev-1")] == [0, 1]
    assert db.delete_instance("dev-1", 0) is True
    assert db.delete_instance("dev-1", 0) is False
    assert [i.name for i in db.all_instances()] == ["dev-1-1"]


def test_allocate_address_skips_reserved_and_is_global(db: StateDB) -> None:
    for env in ("a", "b"):
        claim(db, env)
        for i in range(2):
            db.add_instance(env, i, f"{env}-{i}", "creating")
    assert db.allocate_address("a", 0, "10.9.0.0/24", reserved={"10.9.0.3"}) == "10.9.0.2"
    assert db.allocate_address("a", 0, "10.9.0.0/24") == "10.9.0.2"  # idempotent
    assert db.allocate_address("a", 1, "10.9.0.0/24", reserved={"10.9.0.3"}) == "10.9.0.4"
    assert db.allocate_address("b", 0, "10.9.0.0/24") == "10.9.0.3"  # other env, no reservation
    db.delete_env("a")  # frees .2 and .4
    assert db.allocate_address("b", 1, "10.9.0.0/24") == "10.9.0.2"
    with pytest.raises(StateError):
        db.set_instance("b", 1, address="10.9.0.3")  # held by b/0
    with pytest.raises(StateError) as ei:
        db.allocate_address("b", 1, "not-a-subnet")
    assert ei.value.hint


def test_subnet_full(db: StateDB) -> None:
    claim(db, "dev-1")
    got = []
    for i in range(6):
        db.add_instance("dev-1", i, f"dev-1-{i}", "creating")
    for i in range(5):  # /29: .1-.6 are hosts, .1 is the gateway
        got.append(db.allocate_address("dev-1", i, "10.0.0.0/29"))
    assert got == [f"10.0.0.{n}" for n in range(2, 7)]
    with pytest.raises(StateError) as ei:
        db.allocate_address("dev-1", 5, "10.0.0.0/29")
    assert "subnet full" in ei.value.message and ei.value.hint


# -- router ports --------------------------------------------------------------------------


def test_router_ports(db: StateDB) -> None:
    for n in ("a", "b", "c", "d"):
        claim(db, n)
    busy = {8001}
    assert db.claim_router_port("a", 8000, 8003, busy.__contains__) == 8000
    assert db.claim_router_port("a", 8000, 8003, busy.__contains__) == 8000  # kept
    assert db.claim_router_port("b", 8000, 8003, busy.__contains__) == 8002  # 8001 taken by the host
    assert db.claim_router_port("c", 8000, 8003, busy.__contains__) == 8003
    with pytest.raises(StateError) as ei:
        db.claim_router_port("d", 8000, 8003, busy.__contains__)
    assert ei.value.hint
    assert db.get_env("b").router_port == 8002
    with pytest.raises(StateError):
        db.set_env("d", router_port=8000)  # unique across envs
    with pytest.raises(StateError):
        db.claim_router_port("d", 9000, 8000, busy.__contains__)
    db.delete_env("a")
    assert db.claim_router_port("d", 8000, 8003, busy.__contains__) == 8000


# -- snapshots and cascade -----------------------------------------------------------------


def test_snapshots(db: StateDB) -> None:
    claim(db, "dev-1")
    s1 = db.add_snapshot("dev-1", "before", {"layers": ["x"]}, now=1.0)
    db.add_snapshot("dev-1", "after", now=2.0)
    assert db.get_snapshot("dev-1", "before") == s1
    assert s1.data == {"layers": ["x"]}
    assert [s.name for s in db.snapshots("dev-1")] == ["before", "after"]
    with pytest.raises(StateError) as ei:
        db.add_snapshot("dev-1", "before", {})
    assert ei.value.hint
    with pytest.raises(NotFound) as nf:
        db.get_snapshot("dev-1", "missing")
    assert nf.value.hint and "before" in nf.value.hint
    assert db.delete_snapshot("dev-1", "after") is True
    assert db.delete_snapshot("dev-1", "after") is False


def test_delete_env_cascades(db: StateDB) -> None:
    for env in ("a", "b"):
        claim(db, env)
        db.add_instance(env, 0, f"{env}-0", "running")
        db.add_snapshot(env, "s", {})
    db.event("up", "a is up", env="a")
    db.delete_env("a")
    assert db.instances("a") == [] and db.snapshots("a") == []
    assert [i.env for i in db.all_instances()] == ["b"]
    assert len(db.snapshots("b")) == 1
    assert [e["message"] for e in db.events("a")] == ["a is up"]  # history outlives the env


# -- stale envs ----------------------------------------------------------------------------


def test_stale_envs_dead_pid_and_expiry(db: StateDB) -> None:
    gone = dead_pid()
    claim(db, "crashed-up", pid=gone)
    claim(db, "busy-up")  # our own pid: alive
    claim(db, "crashed-down")
    db.set_env("crashed-down", state="deleting", pid=gone)
    claim(db, "running-dead-pid", pid=gone)
    db.set_env("running-dead-pid", state="running")  # finished: the pid does not matter
    claim(db, "expired", expires=100.0)
    db.set_env("expired", state="running")
    claim(db, "fresh", expires=10_000.0)
    assert [e.name for e in db.stale_envs(now=500.0)] == ["crashed-down", "crashed-up", "expired"]
    assert [e.name for e in db.stale_envs(now=500.0, alive=lambda pid: True)] == ["expired"]
    assert "fresh" in [e.name for e in db.stale_envs(now=20_000.0)]


# -- events --------------------------------------------------------------------------------


def test_events_order_filter_and_limit(db: StateDB) -> None:
    for i in range(5):
        db.event("log", f"m{i}", env="a" if i % 2 == 0 else None, data={"i": i})
    all_ = db.events()
    assert [e["message"] for e in all_] == ["m0", "m1", "m2", "m3", "m4"]
    assert [e["id"] for e in all_] == sorted(e["id"] for e in all_)
    assert all_[2]["data"] == {"i": 2} and all_[2]["env"] == "a" and all_[2]["kind"] == "log"
    assert all(isinstance(e["ts"], float) for e in all_)
    assert [e["message"] for e in db.events(limit=2)] == ["m3", "m4"]  # the latest, oldest first
    assert [e["message"] for e in db.events("a")] == ["m0", "m2", "m4"]


# -- concurrency across processes ----------------------------------------------------------


def _run(target: Any, *args: Any) -> list[Any]:
    """Run target(i, barrier, queue, *args) in NPROC forked processes; return their queue results.

    Daemonic children and a barrier timeout: a broken worker fails the test, never hangs pytest.
    """
    barrier, queue = FORK.Barrier(NPROC, timeout=20), FORK.Queue()
    procs = [FORK.Process(target=target, args=(i, barrier, queue, *args), daemon=True) for i in range(NPROC)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=30) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * NPROC
    return results


def _claim_worker(i: int, barrier: Any, queue: Any, path: Path) -> None:
    try:
        barrier.wait()
        db = StateDB(path)  # a fresh file: schema creation races too
        claim(db, "staging-1", owner=f"user{i}")
        queue.put("won")
    except EnvExists:
        queue.put("exists")
    except Exception as e:
        queue.put(f"error: {e!r}")


def test_concurrent_claims_of_one_name_one_wins(tmp_path: Path) -> None:
    path = tmp_path / ".sandbox" / "state.db"
    results = _run(_claim_worker, path)
    assert sorted(results) == ["exists"] * (NPROC - 1) + ["won"]
    envs = StateDB(path).list_envs()
    assert len(envs) == 1 and envs[0].owner.startswith("user")


def _address_worker(i: int, barrier: Any, queue: Any, db: StateDB) -> None:
    try:
        barrier.wait()
        queue.put([db.allocate_address(f"e{i}", k, "10.50.0.0/24", reserved=set()) for k in range(4)])
    except Exception as e:
        queue.put([f"error: {e!r}"])


def test_concurrent_address_allocation_is_distinct(db: StateDB) -> None:
    for i in range(NPROC):
        claim(db, f"e{i}")
        for k in range(4):
            db.add_instance(f"e{i}", k, f"e{i}-{k}", "creating")
    got = [a for r in _run(_address_worker, db) for a in r]
    assert len(got) == 4 * NPROC and len(set(got)) == len(got), got
    net = ipaddress.ip_network("10.50.0.0/24")
    for a in got:
        assert ipaddress.ip_address(a) in net
        assert a.rsplit(".", 1)[1] not in ("0", "1", "255")
    assert sorted(got, key=ipaddress.ip_address) == [f"10.50.0.{n}" for n in range(2, 2 + 4 * NPROC)]
    assert {i.address for i in db.all_instances()} == set(got)


def _port_worker(i: int, barrier: Any, queue: Any, db: StateDB) -> None:
    try:
        barrier.wait()
        queue.put(db.claim_router_port(f"e{i}", 9000, 9100, lambda port: port == 9003))
    except Exception as e:
        queue.put(f"error: {e!r}")


def test_concurrent_port_claims_are_unique(db: StateDB) -> None:
    for i in range(NPROC):
        claim(db, f"e{i}")
    ports = _run(_port_worker, db)
    assert all(isinstance(p, int) for p in ports), ports
    assert sorted(ports) == [9000, 9001, 9002, 9004, 9005, 9006, 9007, 9008]
    assert sorted(e.router_port or 0 for e in db.list_envs()) == sorted(ports)
