"""lxc's one error-translation point: a failing lxc-* tool is a BackendError naming the instance,
the tool's stderr and a hint, never a CalledProcessError or OSError. Fake tools first on PATH;
no root, no containers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandbox.backends.base import BackendContext, BackendError, ImageAccess
from sandbox.backends.lxc import LxcBackend
from sandbox.backends.lxctools import lxc_errors, lxc_tool
from sandbox.settings import Network
from sandbox.store import ImageStore


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    return d


def tool(fakebin: Path, name: str, script: str) -> None:
    p = fakebin / name
    p.write_text("#!/bin/sh\n" + script + "\n")
    p.chmod(0o755)


@pytest.fixture
def lxc(tmp_path: Path) -> LxcBackend:
    ctx = BackendContext(
        workspace_id="ws1",
        runtime=tmp_path / "run",
        tmp=tmp_path / "tmp",
        network=Network(),
        images=ImageAccess(ImageStore(tmp_path / "images")),
    )
    backend = LxcBackend(ctx)
    files = (tmp_path / "subuid", tmp_path / "subgid")
    for f in files:
        f.write_text("root:100000:65536\n")
    backend.subid_files = files  # never the host's /etc/subuid
    return backend


def instance(lxc: LxcBackend, name: str) -> Path:
    d = lxc.lxcpath / name
    d.mkdir(parents=True)
    (d / "config").write_text("lxc.uts.name = x\n")
    return d


def test_a_failing_lxc_start_names_the_instance_its_stderr_the_log_and_a_hint(
    lxc: LxcBackend, fakebin: Path
) -> None:
    tool(fakebin, "lxc-start", 'echo "lxc-start: st-1-0: no cgroup for you" >&2; exit 1')
    d = instance(lxc, "st-1-0")
    (d / "lxc.log").write_text("lxc x 1 WARN a\nlxc x 2 ERROR cgroup2 - Permission denied\n")
    with pytest.raises(BackendError) as info:
        lxc.start("st-1-0")
    e = info.value
    assert "lxc-start failed starting st-1-0" in e.message and "no cgroup for you" in e.message
    assert "ERROR cgroup2 - Permission denied" in e.message and "WARN" not in e.message
    assert "lxc-checkconfig" in (e.hint or "") and str(d / "lxc.log") in (e.hint or "")
    assert isinstance(e.__cause__, subprocess.CalledProcessError)


def test_a_failed_freeze_during_a_snapshot_is_a_backend_error(lxc: LxcBackend, fakebin: Path) -> None:
    tool(fakebin, "lxc-info", "echo RUNNING")
    tool(fakebin, "lxc-freeze", 'echo "Failed to freeze st-1-0" >&2; exit 1')
    d = instance(lxc, "st-1-0")
    (d / "delta0").mkdir()
    with pytest.raises(BackendError, match="lxc-freeze failed freezing st-1-0: Failed to freeze") as info:
        lxc.snapshot("st-1-0", "s1")
    assert "sandbox status" in (info.value.hint or "")


def test_a_failed_copy_names_the_instance_and_hints_at_the_disk(lxc: LxcBackend, fakebin: Path) -> None:
    tool(fakebin, "lxc-info", "echo STOPPED")
    tool(fakebin, "cp", 'echo "cp: error writing: No space left on device" >&2; exit 1')
    d = instance(lxc, "st-1-0")
    (d / "delta0").mkdir()
    with pytest.raises(BackendError, match=r"cp failed snapshotting \(s1\) st-1-0: .*No space left") as info:
        lxc.snapshot("st-1-0", "s1")
    assert "df -h" in (info.value.hint or "")


def test_a_missing_lxc_tool_says_what_to_install(
    lxc: LxcBackend, fakebin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fakebin))  # no lxc-info anywhere
    instance(lxc, "st-1-0")
    with pytest.raises(BackendError, match="lxc-info is not installed") as info:
        lxc.state("st-1-0")
    assert info.value.hint == "apt-get install lxc"


def test_exec_returns_the_command_s_exit_but_a_timeout_is_an_error(lxc: LxcBackend, fakebin: Path) -> None:
    tool(fakebin, "lxc-attach", "echo out; echo err >&2; exit 3")
    instance(lxc, "st-1-0")
    r = lxc.exec("st-1-0", ["false"])
    assert (r.code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    tool(fakebin, "lxc-attach", "sleep 5")
    with pytest.raises(BackendError, match=r"lxc-attach timed out after 0.2s running 'sleep 9' in st-1-0"):
        lxc.exec("st-1-0", ["sleep", "9"], timeout=0.2)


def test_lxc_tool_without_check_returns_the_result(fakebin: Path) -> None:
    tool(fakebin, "lxc-stop", "exit 2")
    p = lxc_tool(["lxc-stop"], instance="x", what="stopping", check=False)
    assert p.returncode == 2


def test_os_errors_in_the_block_name_the_instance(tmp_path: Path) -> None:
    with (
        pytest.raises(BackendError, match=r"unpacking image 1a2b: .*/nope: No such file") as info,
        lxc_errors("image 1a2b", "unpacking"),
    ):
        (tmp_path / "nope").read_text()
    assert "sandbox gc" in (info.value.hint or "")
