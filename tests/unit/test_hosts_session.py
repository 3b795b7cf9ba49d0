"""Agent sessions (sandbox/hosts/session.py, sandbox/hostagent/session.py): the ops of one command go
over one agent process on the host; what an op or its tools print never passes for an answer; a dead,
silent, crashing or over-talkative agent is an error naming the host, and the session then gives
way to one command per call. Over a local transport with sessions, and over a real loopback sshd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sandbox.hosts import agent as agent_mod
from sandbox.hosts import session as session_mod
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.agentcall import AgentError, answer_doc
from sandbox.hosts.session import AgentSession, SessionLost
from sandbox.hosts.transport import HostUnreachable, LocalTransport
from tests.unit.test_hosts_sshd import Sshd, sshd  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]

#: an agent with extra ops, to be served in a session: one that prints and runs a tool that prints
#: and reads stdin, one that sleeps, one that answers big, one that crashes
NOISY = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from sandbox.hostagent import main, session
    @main.op("noisy")
    def noisy(argv):
        print("a print from the op")
        subprocess.run(["sh", "-c", "echo from a tool; cat"], check=True)  # cat: stdin is /dev/null
        return {"args": argv, "request": main.read_request()}
    @main.op("slow")
    def slow(argv):
        time.sleep(float(argv[0]))
        return "late"
    @main.op("big")
    def big(argv):
        return "x" * int(argv[0])
    @main.op("crash")
    def crash(argv):
        raise RuntimeError("boom in the agent")
    session.SESSION_OPS = session.SESSION_OPS | {"noisy", "slow", "big", "crash"}
    sys.exit(main.main(["session"]))
    """
)


@pytest.fixture
def noisy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentSession:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "host"))
    s = AgentSession(LocalTransport("h1", sessions=True), [sys.executable, "-c", NOISY])
    assert s.greet()["ok"]["pid"] == s.proc.pid
    yield s
    s.close(kill=True)


def test_many_calls_share_one_process_and_stray_output_is_not_an_answer(noisy: AgentSession) -> None:
    for i in range(3):
        doc = noisy.call("noisy", [str(i)], {"n": i}, timeout=30)
        assert doc == {"exit": 0, "ok": {"args": [str(i)], "request": {"n": i}}}
    assert noisy.call("ping", [], None, timeout=30)["ok"]["pid"] == noisy.proc.pid
    assert b"a print from the op" in noisy.stderr and b"from a tool" in noisy.stderr
    noisy.close()
    assert noisy.proc.returncode == 0  # end-of-file: the agent exits, nothing stays on the host


def test_ops_that_stream_or_take_the_terminal_do_not_run_in_a_session(noisy: AgentSession) -> None:
    for op in ("recv-image", "lxc-tty", "lxc-logs", "session", "no-such-op"):
        doc = noisy.call(op, [], None, timeout=30)
        assert doc["exit"] == 3 and doc["error"] == "AgentUsage", doc
    noisy._in.write(b"not json\n[1]\n")
    noisy._in.flush()
    for _ in range(2):
        assert noisy._next("x", 30)["error"] == "AgentUsage"
    assert noisy.call("noisy", [], None, timeout=30)["exit"] == 0  # still serving


def test_a_silent_agent_is_unreachable_after_the_timeout(noisy: AgentSession) -> None:
    with pytest.raises(HostUnreachable, match="host h1: agent slow got no answer in 1s"):
        noisy.call("slow", ["30"], None, timeout=1)
    assert noisy.closed and noisy.proc.returncode is not None
    with pytest.raises(SessionLost):
        noisy.call("ping", [], None, timeout=5)


def test_a_killed_agent_is_a_lost_session_naming_the_host(noisy: AgentSession) -> None:
    noisy.proc.kill()
    with pytest.raises(SessionLost, match="host h1: the agent session ended") as e:
        noisy.call("ping", [], None, timeout=10)
    assert e.value.host == "h1" and e.value.hint


def test_an_answer_over_the_bound_is_refused(noisy: AgentSession, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "MAX_ANSWER", 4096)
    assert noisy.call("big", ["100"], None, timeout=30)["ok"] == "x" * 100
    with pytest.raises(Exception, match="host h1: agent big answered more than"):
        noisy.call("big", ["100000"], None, timeout=30)
    assert noisy.closed


def test_a_crash_answers_its_traceback_and_ends_the_session(noisy: AgentSession) -> None:
    doc = noisy.call("crash", [], None, timeout=30)
    assert doc["exit"] == 1 and "boom in the agent" in doc["crash"]
    with pytest.raises(AgentError, match="boom in the agent") as e:
        answer_doc("h1", "crash", 1, doc)
    assert e.value.kind == ""
    noisy.proc.wait(10)
    assert noisy.proc.returncode == 1


# -- HostAgent with sessions -----------------------------------------------------------------------


class Spawns(LocalTransport):
    def __init__(self, name: str) -> None:
        super().__init__(name, sessions=True)
        self.spawned = 0
        self.ran: list[list[str]] = []

    def spawn(self, argv):  # type: ignore[no-untyped-def]
        self.spawned += 1
        return super().spawn(argv)

    def run(self, argv, **kw):  # type: ignore[no-untyped-def]
        self.ran.append(list(argv))
        return super().run(argv, **kw)


@pytest.fixture
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "host" / "agent"
    monkeypatch.setattr(agent_mod, "AGENT_DIR", str(d))
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "host"))
    return d


def test_a_command_opens_one_session_per_host(agent_dir: Path) -> None:
    t = Spawns("h2")
    a = HostAgent(t)
    first = a.ensure()  # the bundle missing: installed, then the session opened again
    assert t.spawned == 2 and len(t.ran) == 1 and "cat >" in t.ran[0][2]
    pids = {a.call("ping")["pid"] for _ in range(5)}
    assert pids == {first["pid"]} and t.spawned == 2 and len(t.ran) == 1
    with pytest.raises(AgentError) as e:
        a.call("lxc", request={"method": "rm_rf", "args": {}})
    assert e.value.kind == "BadRequest" and e.value.host == "h2"
    assert a.call("ping")["pid"] == first["pid"]  # an refused request leaves the session serving
    if Path("/usr/bin/python3").exists():
        assert a.prefix()[0] == os.path.realpath("/usr/bin/python3") or a.prefix()[0] == "/usr/bin/python3"
    a.close()
    assert a._session is None


def test_a_call_while_the_session_is_busy_goes_as_a_command(agent_dir: Path) -> None:
    t = Spawns("h3")
    a = HostAgent(t)
    a.ensure()
    session = a._session
    assert session is not None
    with session.lock:  # another thread's call in flight
        other = a.call("ping")
    assert other["pid"] != session.proc.pid and t.ran[-1][-1] == "ping"
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(a.call("ping")["pid"])) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == 4


def test_after_a_lost_session_the_calls_go_as_commands(agent_dir: Path) -> None:
    a = HostAgent(Spawns("h4"))
    a.ensure()
    assert a._session is not None
    a._session.proc.kill()
    with pytest.raises(SessionLost):
        a.call("ping")
    assert a.call("ping")["euid"] == os.geteuid()


def test_a_session_over_a_real_sshd(sshd: Sshd, agent_dir: Path) -> None:  # noqa: F811
    """One ssh session for every call, the agent gone when the command closes it, and a host whose
    sshd is gone mid-command an unreachable host."""
    t = sshd.client("sess")
    a = HostAgent(t)
    pid = a.ensure()["pid"]
    assert {a.call("ping")["pid"] for _ in range(3)} == {pid}
    a.close()
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        subprocess.run(["sleep", "0.05"], check=False)
    assert not Path(f"/proc/{pid}").exists()
    b = HostAgent(t)
    b.ensure()
    sshd.stop()  # the listener and every session of it: the connection drops
    with pytest.raises(HostUnreachable) as e:
        b.call("ping", timeout=30)
    assert e.value.host == "lo1"
    assert json.dumps(e.value.to_dict())
