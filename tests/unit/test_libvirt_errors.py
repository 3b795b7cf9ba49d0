"""translate: every libvirtError becomes one BackendError with a hint, in one place."""

from __future__ import annotations

import libvirt
import pytest

from sandbox.backends.base import BackendError
from sandbox.backends.libvirtconn import _calls, translate


def error(code: int, message: str) -> libvirt.libvirtError:
    e = libvirt.libvirtError(message)
    e.err = (code, 0, message, 2, None, None, None, 0, 0)
    return e


def test_daemon_not_running() -> None:
    e = translate(
        error(libvirt.VIR_ERR_SYSTEM_ERROR, "Failed to connect socket to '/var/run/libvirt/libvirt-sock'"),
        "connecting to qemu:///system",
    )
    assert "cannot connect to libvirtd" in e.message and "libvirtd -d" in (e.hint or "")
    assert "libvirtd" in (translate(error(libvirt.VIR_ERR_NO_CONNECT, "x"), "w").hint or "")


def test_permission_denied() -> None:
    e = translate(error(libvirt.VIR_ERR_AUTH_FAILED, "authentication failed"), "connecting")
    assert "refused" in e.message and "root" in (e.hint or "")
    e = translate(error(libvirt.VIR_ERR_INTERNAL_ERROR, "open /x: Permission denied"), "starting a")
    assert "permission denied" in e.message and "root" in (e.hint or "")


def test_name_taken() -> None:
    e = translate(error(libvirt.VIR_ERR_DOM_EXIST, "domain 'sbx-1-a-0' already exists"), "defining a-0")
    assert e.message.startswith("defining a-0: a domain of that name exists")
    assert "gc" in (e.hint or "")


def test_agent_and_unknown_errors_keep_the_message() -> None:
    e = translate(error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding"), "exec in a")
    assert "Guest agent is not responding" in e.message and "sandbox logs" in (e.hint or "")
    e = translate(error(libvirt.VIR_ERR_INTERNAL_ERROR, "something odd"), "starting a")
    assert e.message == "starting a: something odd" and e.hint


def test_calls_translates_and_chains() -> None:
    with pytest.raises(BackendError, match="a domain of that name exists") as info, _calls("defining x"):
        raise error(libvirt.VIR_ERR_DOM_EXIST, "exists")
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
