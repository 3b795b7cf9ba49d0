"""vagrant/: the Vagrantfile validates with Debian's own vagrant (and its libvirt provider), its
forwarded ports are the box's router ports, and its provisioning makes a workspace that loads.

Booting the box needs a downloaded box image and a hypervisor: not here (see README, "On a laptop").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.config.profile_loader import load_profile_by_name
from sandbox.config.settings_schema import validate_settings
from sandbox.settings import Settings

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"


def vagrant(tmp_path: Path, *args: str, provider: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is missing (apt-get install --no-install-recommends vagrant vagrant-libvirt)")
    env = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),  # not ~/.vagrant.d
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),  # not vagrant/.vagrant in the checkout
        "VAGRANT_CHECKPOINT_DISABLE": "1",  # no version check over the network
        "VAGRANT_CWD": str(VAGRANT),
        **({"VAGRANT_DEFAULT_PROVIDER": provider} if provider else {}),
    }
    return subprocess.run(
        ["vagrant", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


def auto_ports() -> range:
    m = re.search(r"^AUTO_PORTS = \((\d+)\.\.(\d+)\)", (VAGRANT / "Vagrantfile").read_text(), re.M)
    assert m, "the Vagrantfile names its port range AUTO_PORTS = (FIRST..LAST)"
    return range(int(m[1]), int(m[2]) + 1)


def test_vagrant_validate(tmp_path: Path) -> None:
    r = vagrant(tmp_path, "validate", provider="libvirt")  # the libvirt block too (vagrant-libvirt)
    assert r.returncode == 0 and "validated successfully" in r.stdout, r.stdout + r.stderr
    r = vagrant(tmp_path, "validate", "--ignore-provider")  # what VirtualBox users load, minus its block
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (VAGRANT / ".vagrant").exists()


def test_vagrant_validate_catches_a_mistake(tmp_path: Path) -> None:
    """The check above means something: a misspelt provider setting fails it."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is missing (apt-get install --no-install-recommends vagrant vagrant-libvirt)")
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (VAGRANT / "Vagrantfile").read_text()
    (bad / "Vagrantfile").write_text(text.replace("lv.memory", "lv.memroy"))
    shutil.copy(VAGRANT / "provision.sh", bad / "provision.sh")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "h"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "d")}
    env |= {"VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    r = subprocess.run(["vagrant", "validate"], cwd=bad, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "memroy" in r.stdout + r.stderr


def test_forwarded_ports_are_the_boxs_router_ports() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert re.search(r'provider "libvirt"', text) and re.search(r'provider "virtualbox"', text)
    assert 'provision "shell", path: "provision.sh", args: [AUTO_PORTS.first, AUTO_PORTS.last]' in text
    assert "PROD_PORT = 8080" in text  # the template's prod router.port
    default = Settings().routers.port_range
    assert default[0] <= auto_ports().start and auto_ports().stop - 1 <= default[1]
    if shutil.which("ruby"):
        subprocess.run(["ruby", "-c", str(VAGRANT / "Vagrantfile")], check=True, capture_output=True)


def test_provisioning_makes_a_workspace_that_loads(tmp_path: Path) -> None:
    """provision.sh without its install step: the workspace, its box settings and the login snippet;
    a second run (`vagrant provision`) keeps an edited workspace as it is."""
    script = VAGRANT / "provision.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    app, profile_d = tmp_path / "srv" / "app", tmp_path / "profile.d"
    profile_d.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BOX_INSTALL": "0",
        "BOX_APP": str(app),
        "BOX_PROFILE_D": str(profile_d),
        "SANDBOX": f"{sys.executable} -m sandbox",
    }
    ports = auto_ports()
    argv = ["sh", str(script), str(ports.start), str(ports.stop - 1)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    settings = validate_settings(app / "sandbox.yaml")
    assert settings.routers.port_range == (ports.start, ports.stop - 1)
    prod = load_profile_by_name(app / "profiles", "prod").profile
    dev = load_profile_by_name(app / "profiles", "dev").profile
    assert prod.recipe == dev.recipe == "app" and (app / "recipes" / "app.yaml").is_file()
    assert str(prod.router.listen) == str(dev.router.listen) == "0.0.0.0" and prod.router.port == 8080
    snippet = profile_d / "sandbox.sh"
    subprocess.run(["sh", "-n", str(snippet)], check=True)
    assert f"SANDBOX_WORKSPACE={app}" in snippet.read_text()

    (app / "profiles" / "dev.yaml").write_text((app / "profiles" / "dev.yaml").read_text() + "# mine\n")
    before = {p: p.read_bytes() for p in app.rglob("*") if p.is_file()}
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p: p.read_bytes() for p in app.rglob("*") if p.is_file()} == before
