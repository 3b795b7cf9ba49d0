"""exec through qemu-guest-agent: the request, polling, output decoding, timeouts (fake agent)."""

from __future__ import annotations

import base64
import json

import pytest

from sandbox.backends.base import BackendError
from sandbox.backends.guestagent import exec_request, guest_exec, ping, put_file


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Agent:
    """Answers guest-exec with pid 7 and guest-exec-status with `statuses`, one per call."""

    def __init__(self, *statuses: dict[str, object]) -> None:
        self.statuses = list(statuses)
        self.sent: list[dict[str, object]] = []

    def __call__(self, cmd: str, timeout: int) -> str:
        doc = json.loads(cmd)
        self.sent.append(doc)
        if doc["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 7}})
        if doc["execute"] == "guest-exec-status":
            assert doc["arguments"] == {"pid": 7}
            return json.dumps(
                {"return": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}
            )
        return json.dumps({"error": {"class": "CommandNotFound", "desc": "nope"}})


def test_root_exec_gets_a_clean_environment() -> None:
    req = exec_request(["id", "-u"], None, {"X": "1"})
    args = req["arguments"]
    assert req["execute"] == "guest-exec" and args["path"] == "id" and args["arg"] == ["-u"]
    assert "X=1" in args["env"] and "HOME=/root" in args["env"] and args["capture-output"] is True
    assert "input-data" not in args


def test_exec_as_a_user_goes_through_runuser() -> None:
    args = exec_request(["id", "-u"], "app", None, stdin=b"hi")["arguments"]
    assert args["path"] == "/bin/sh" and args["arg"][2:] == ["app", "id", "-u"]
    assert "runuser -u" in args["arg"][1]
    assert base64.b64decode(args["input-data"]) == b"hi"


def test_polls_until_exit_and_decodes_output() -> None:
    agent = Agent(
        {"exited": False}, {"exited": True, "exitcode": 3, "out-data": b64("out\n"), "err-data": b64("e")}
    )
    r = guest_exec(agent, ["false"])
    assert (r.code, r.stdout, r.stderr) == (3, "out\n", "e")
    assert [d["execute"] for d in agent.sent] == ["guest-exec", "guest-exec-status", "guest-exec-status"]


def test_a_signal_is_128_plus_its_number() -> None:
    assert guest_exec(Agent({"exited": True, "signal": 9}), ["sleep", "9"]).code == 137


def test_timeout() -> None:
    with pytest.raises(BackendError, match=r"timed out after 0\.1s"):
        guest_exec(Agent({"exited": False}), ["sleep", "100"], timeout=0.1, what="vm-0")


def test_put_file_and_ping() -> None:
    agent = Agent({"exited": True, "exitcode": 0})
    put_file(agent, "/etc/x", b"data", 0o640, 0, 1001)
    args = agent.sent[0]["arguments"]
    assert args["arg"][-3:] == ["/etc/x", "0:1001", "640"]  # type: ignore[index]
    assert base64.b64decode(args["input-data"]) == b"data"  # type: ignore[index]
    with pytest.raises(BackendError, match="cannot write /etc/x"):
        put_file(Agent({"exited": True, "exitcode": 1, "err-data": b64("ro")}), "/etc/x", b"", 0o644, 0, 0)
    assert ping(Agent()) is False  # guest-ping answered with an error
