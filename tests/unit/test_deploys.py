"""promote.deploys: deploy records, steps, history, the per-env lock, stale locks, verifications."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.promote.deploys import DeployInterrupted, DeployLocked, Deploys
from sandbox.state import StateDB

V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64
V3 = "sha256:" + "3" * 64


@pytest.fixture
def deploys(tmp_path: Path) -> Deploys:
    return Deploys(StateDB(tmp_path / "state.db"))


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()  # reaped: the pid is gone (a zombie would still count as alive)
    return p.pid


def orphan(deploys: Deploys, deploy_id: int, pid: int | None = None) -> None:
    """What a `kill -9` of the promoting process leaves: a running deploy whose pid is gone."""
    with deploys.state.transaction() as c:
        c.execute("UPDATE deploys SET pid = ? WHERE id = ?", (pid or dead_pid(), deploy_id))


def test_begin_records_a_running_deploy_owned_by_this_process(deploys: Deploys) -> None:
    t0 = time.time()
    d = deploys.begin("prod", V1, V2, "rolling", source="staging-9")
    assert (d.env, d.from_image, d.to_image, d.strategy) == ("prod", V1, V2, "rolling")
    assert (d.state, d.kind, d.source, d.forced, d.error) == ("running", "promote", "staging-9", False, None)
    assert d.pid == os.getpid() and d.alive
    assert d.steps == [] and d.finished is None
    assert t0 - 1 <= d.started == d.updated <= time.time()
    assert deploys.running("prod") == d
    assert deploys.interrupted("prod") is None  # it runs, and its process is alive


def test_steps_are_appended_in_order_with_their_data(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    deploys.step(d.id, "started", instance="prod-2", address="10.0.0.4")
    deploys.step(d.id, "healthy", instance="prod-2", seconds=1.5)
    steps = deploys.get(d.id).steps
    assert [s["step"] for s in steps] == ["started", "healthy"]
    assert steps[0]["instance"] == "prod-2" and steps[0]["address"] == "10.0.0.4"
    assert steps[1]["seconds"] == 1.5
    assert steps[0]["ts"] <= steps[1]["ts"] <= time.time() + 0.001  # ts is rounded to ms
    assert deploys.get(d.id).updated >= d.updated


def test_finish_ends_the_deploy_and_frees_the_env(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    deploys.finish(d.id, "done")
    done = deploys.get(d.id)
    assert done.state == "done" and done.error is None
    assert done.finished is not None and done.finished >= done.started
    assert deploys.running("prod") is None
    again = deploys.begin("prod", V2, V3, "static")  # the lock is free again
    deploys.finish(again.id, "rolled-back", error="new instance prod-4 did not become healthy")
    assert deploys.get(again.id).error == "new instance prod-4 did not become healthy"


def test_history_is_newest_first_per_env_and_limited(deploys: Deploys) -> None:
    ids = []
    for i, (a, b) in enumerate([(V1, V2), (V2, V1), (V1, V2)]):
        d = deploys.begin("prod", a, b, "rolling", kind="rollback" if i == 1 else "promote", forced=i == 2)
        deploys.finish(d.id, "done")
        ids.append(d.id)
    other = deploys.begin("staging-1", V1, V3, "rolling")
    h = deploys.history("prod")
    assert [d.id for d in h] == ids[::-1]
    assert [d.kind for d in h] == ["promote", "rollback", "promote"]
    assert [d.forced for d in h] == [True, False, False]
    assert [d.id for d in deploys.history("prod", limit=2)] == ids[:0:-1]
    assert [d.id for d in deploys.history("staging-1")] == [other.id]
    assert deploys.history("dev-1") == []
    assert h[0].to_dict()["forced"] is True and h[0].to_dict()["steps"] == []


def test_get_of_an_unknown_deploy_is_a_clear_error(deploys: Deploys) -> None:
    with pytest.raises(SandboxError, match="no deploy #42"):
        deploys.get(42)


def test_second_begin_while_one_runs_with_a_live_pid_is_locked(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    deploys.step(d.id, "healthy", instance="prod-2")
    with pytest.raises(DeployLocked) as e:
        deploys.begin("prod", V1, V3, "rolling")
    assert f"pid {os.getpid()}" in e.value.message and f"#{d.id}" in e.value.message
    assert "at step healthy" in e.value.message
    assert e.value.hint and "sandbox history" in e.value.hint
    assert [x.id for x in deploys.history("prod")] == [d.id]  # nothing recorded for the refused one


def test_the_lock_is_per_env(deploys: Deploys) -> None:
    deploys.begin("prod", V1, V2, "rolling")
    s = deploys.begin("staging-1", V1, V2, "rolling")
    assert s.state == "running"


def test_a_dead_pid_means_interrupted_with_a_hint(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    deploys.step(d.id, "routed", instance="prod-2")
    pid = dead_pid()
    orphan(deploys, d.id, pid)
    with pytest.raises(DeployInterrupted) as e:
        deploys.begin("prod", V1, V2, "rolling")
    msg, hint = e.value.message, e.value.hint or ""
    assert "interrupted" in msg and f"#{d.id}" in msg and "at step routed" in msg and f"pid {pid}" in msg
    assert "sandbox promote --resume --to prod" in hint and "sandbox rollback --to prod" in hint
    gone = deploys.interrupted("prod")
    assert gone is not None and gone.id == d.id and not gone.alive


def test_interrupted_before_any_step_says_start(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    orphan(deploys, d.id)
    with pytest.raises(DeployInterrupted, match="at step start"):
        deploys.begin("prod", V2, V3, "rolling")


def test_a_deploy_without_a_pid_counts_as_interrupted(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    with deploys.state.transaction() as c:
        c.execute("UPDATE deploys SET pid = NULL WHERE id = ?", (d.id,))
    assert deploys.interrupted("prod") is not None
    with pytest.raises(DeployInterrupted):
        deploys.begin("prod", V1, V2, "rolling")


def test_take_over_continues_an_interrupted_deploy_in_this_process(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    deploys.step(d.id, "started", instance="prod-2")
    orphan(deploys, d.id)
    gone = deploys.interrupted("prod")
    assert gone is not None
    mine = deploys.take_over(gone)
    assert mine.id == d.id and mine.pid == os.getpid() and mine.alive and mine.state == "running"
    assert [s["step"] for s in mine.steps] == ["started"]  # the record goes on where it stopped
    assert deploys.interrupted("prod") is None
    with pytest.raises(DeployLocked):  # and it holds the lock again
        deploys.begin("prod", V1, V2, "rolling")


def test_take_over_of_a_live_or_finished_deploy_is_refused(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    with pytest.raises(DeployLocked, match="not interrupted"):
        deploys.take_over(d)  # its owner (this process) is alive
    deploys.finish(d.id, "done")
    with pytest.raises(DeployLocked, match="state done"):
        deploys.take_over(deploys.get(d.id))


def test_two_processes_cannot_both_take_over(deploys: Deploys) -> None:
    d = deploys.begin("prod", V1, V2, "rolling")
    orphan(deploys, d.id)
    stale = deploys.interrupted("prod")
    assert stale is not None
    deploys.take_over(stale)
    with pytest.raises(DeployLocked):
        deploys.take_over(stale)  # a second resumer, holding the same stale view, is refused


def test_previous_image_is_the_from_image_of_the_last_finished_deploy(deploys: Deploys) -> None:
    assert deploys.previous_image("prod") is None
    d = deploys.begin("prod", V1, V2, "rolling")
    assert deploys.previous_image("prod") is None  # still running
    deploys.finish(d.id, "done")
    assert deploys.previous_image("prod") == V1
    f = deploys.begin("prod", V2, V3, "rolling")
    deploys.finish(f.id, "rolled-back", error="unhealthy")
    assert deploys.previous_image("prod") == V1  # a rolled-back one changed nothing
    g = deploys.begin("prod", V2, V3, "rolling")
    deploys.finish(g.id, "done")
    assert deploys.previous_image("prod") == V2
    assert deploys.previous_image("staging-1") is None


def test_verifications_count_per_env_and_the_latest_wins(deploys: Deploys) -> None:
    assert deploys.verified_on(V2) == []
    deploys.record_verification(V2, "staging-1", False, "smoke exited 1")
    assert deploys.verified_on(V2) == []
    time.sleep(0.002)
    deploys.record_verification(V2, "staging-1", True, "healthy, smoke passed")
    assert deploys.verified_on(V2) == ["staging-1"]
    time.sleep(0.002)
    deploys.record_verification(V2, "staging-2", True, "healthy")
    assert deploys.verified_on(V2) == ["staging-1", "staging-2"]
    time.sleep(0.002)
    deploys.record_verification(V2, "staging-1", False, "unhealthy")  # failed again: no longer counts
    assert deploys.verified_on(V2) == ["staging-2"]
    assert deploys.verified_on(V3) == []  # per image


def test_state_survives_a_new_deploys_object(tmp_path: Path) -> None:
    a = Deploys(StateDB(tmp_path / "state.db"))
    d = a.begin("prod", V1, V2, "rolling", forced=True)
    a.step(d.id, "started")
    b = Deploys(StateDB(tmp_path / "state.db"))
    got = b.get(d.id)
    assert got.forced is True and got.steps[0]["step"] == "started"


def _racer(path: str, out: str) -> None:
    try:
        d = Deploys(StateDB(Path(path))).begin("prod", V1, V2, "rolling")
        Path(out).write_text(f"won {d.id}")
        time.sleep(1.0)  # hold the lock (alive) while the others try
    except (DeployLocked, DeployInterrupted) as e:
        Path(out).write_text(type(e).__name__)
    except Exception as e:  # reported by the test, not lost in a child's stderr
        Path(out).write_text(f"{type(e).__name__} {e}")


def test_concurrent_begins_from_several_processes_give_one_deploy(tmp_path: Path) -> None:
    import multiprocessing

    db = tmp_path / "state.db"
    StateDB(db)
    ctx = multiprocessing.get_context("spawn")  # separate processes, like two `sandbox` runs
    procs = [ctx.Process(target=_racer, args=(str(db), str(tmp_path / f"out{i}"))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    texts = [(tmp_path / f"out{i}").read_text() for i in range(4)]
    assert [p.exitcode for p in procs] == [0] * 4, texts
    outcomes = sorted(t.split()[0] for t in texts)
    assert outcomes.count("won") == 1, texts
    assert set(outcomes) - {"won"} <= {"DeployLocked", "DeployInterrupted"}, texts
    assert len(Deploys(StateDB(db)).history("prod")) == 1
