"""choose_accel: KVM only when it really boots a kernel; TCG otherwise; the answer kept per host boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.backends.base import BackendError
from sandbox.backends.vmaccel import choose_accel

KERNEL = Path("/nonexistent/vmlinuz")


class Probe:
    def __init__(self, result: bool) -> None:
        self.result = result
        self.calls = 0

    def __call__(self, kernel: Path) -> bool:
        assert kernel == KERNEL
        self.calls += 1
        return self.result


def choose(tmp_path: Path, probe: Probe, *, env: dict[str, str] | None = None, device: bool = True,
           boot: str = "boot-1") -> tuple[str, str]:  # fmt: skip
    return choose_accel(
        tmp_path / "accel.json",
        KERNEL,
        env=env or {},
        device_ok=lambda: device,
        probe=probe,
        boot=lambda: boot,
    )


def test_a_kvm_that_hangs_falls_back_to_tcg(tmp_path: Path) -> None:
    probe = Probe(False)
    accel, why = choose(tmp_path, probe)
    assert accel == "tcg" and "TCG" in why and probe.calls == 1


def test_a_kvm_that_boots_is_used(tmp_path: Path) -> None:
    assert choose(tmp_path, Probe(True))[0] == "kvm"


def test_no_device_means_tcg_without_a_probe(tmp_path: Path) -> None:
    probe = Probe(True)
    assert choose(tmp_path, probe, device=False)[0] == "tcg"
    assert probe.calls == 0


def test_the_answer_is_kept_for_this_boot_only(tmp_path: Path) -> None:
    probe = Probe(False)
    choose(tmp_path, probe)
    probe.result = True
    assert choose(tmp_path, probe)[0] == "tcg" and probe.calls == 1  # remembered
    assert json.loads((tmp_path / "accel.json").read_text())["accel"] == "tcg"
    assert choose(tmp_path, probe, boot="boot-2")[0] == "kvm" and probe.calls == 2  # host rebooted


def test_the_environment_forces_a_choice(tmp_path: Path) -> None:
    probe = Probe(True)
    assert choose(tmp_path, probe, env={"SANDBOX_LIBVIRT_ACCEL": "tcg"}) == ("tcg", "SANDBOX_LIBVIRT_ACCEL")
    assert choose(tmp_path, Probe(False), env={"SANDBOX_LIBVIRT_ACCEL": "KVM"})[0] == "kvm"
    assert probe.calls == 0
    with pytest.raises(BackendError, match="not kvm or tcg"):
        choose(tmp_path, probe, env={"SANDBOX_LIBVIRT_ACCEL": "hvf"})


def test_a_corrupt_cache_is_probed_again(tmp_path: Path) -> None:
    (tmp_path / "accel.json").write_text("{not json")
    probe = Probe(True)
    assert choose(tmp_path, probe)[0] == "kvm" and probe.calls == 1
