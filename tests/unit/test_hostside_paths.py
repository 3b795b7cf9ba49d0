"""Issue 10, classes 1 and 2: what an instance or a recipe plants in a root never reaches the host.

Each test plants one attack (a link, a FIFO, a device) in an instance's upper dir or an image root
made here, runs the host-side code that used to follow it, and checks that "the host file" (a tmp
file standing for it) is unchanged and that the call returned quickly.
"""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.base import BackendContext, BackendError, ImageAccess, InstanceSpec
from sandbox.backends.hostsetup import IdRange
from sandbox.backends.instancefiles import read_layered, write_instance_files
from sandbox.backends.lxc import LxcBackend
from sandbox.build import applayer
from sandbox.build.normalize import SOURCES_NOTE, clean_rootfs
from sandbox.build.vmflavour import write_vm_files
from sandbox.config import load_recipe
from sandbox.errors import BuildError, ConfigError
from sandbox.events import Recorder
from sandbox.imageformats.tools import ImageFormatError
from sandbox.imageformats.vmdisk import copy_boot_file
from sandbox.settings import Network
from sandbox.store import ImageStore
from tests.unit.test_config_sshkeys import blob
from tests.unit.test_saferoot import deadline

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown/mknod need root")

SECRET = "HOST_SECRET=stolen\n"
UID = 100000


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Stands for the host: a secret env file, an 'authorized_keys' dir, a hostname file."""
    h = tmp_path / "host"
    (h / "ssh").mkdir(parents=True)
    (h / "secret.env").write_text(SECRET)
    (h / "hostname").write_text("the-host\n")
    (h / "ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA host-admin\n")
    return h


def host_state(h: Path) -> dict[str, tuple[str, int, int, int]]:
    out = {}
    for p in sorted(h.rglob("*")):
        s = os.lstat(p)
        out[str(p)] = (p.read_text() if p.is_file() else "", s.st_uid, s.st_mode, s.st_mtime_ns)
    return out


# -- instance files (up, clone, restore) --------------------------------------------------------


def spec(name: str = "dev-c-0") -> InstanceSpec:
    return InstanceSpec(name=name, env="dev-c", index=0, image="sha256:" + "a" * 64, address="10.0.3.5")


def test_instance_files_replace_a_planted_hostname_link(tmp_path: Path, host: Path) -> None:
    upper = tmp_path / "delta0"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/hostname").symlink_to(host / "hostname")  # ln -sf /some/host/file /etc/hostname
    (upper / "etc/hosts").symlink_to("../../host/hostname")
    before = host_state(host)
    write_instance_files(upper, spec(), UID, UID)
    assert host_state(host) == before
    assert (upper / "etc/hostname").read_text() == "dev-c-0\n"
    assert not (upper / "etc/hostname").is_symlink()
    assert (upper / "etc/hostname").stat().st_uid == UID


@pytest.mark.parametrize("planted", ["etc", "etc/sandbox"])
def test_instance_files_refuse_a_linked_directory(tmp_path: Path, host: Path, planted: str) -> None:
    upper = tmp_path / "delta0"
    (upper / planted).parent.mkdir(parents=True, exist_ok=True)
    (upper / planted).symlink_to(host)
    before = host_state(host)
    with pytest.raises(BackendError, match="cannot write the instance file"):
        write_instance_files(upper, spec(), UID, UID)
    assert host_state(host) == before
    assert not (host / "instance.env").exists() and not (host / "sandbox").exists()


@pytest.fixture
def lxc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LxcBackend:
    ctx = BackendContext(
        workspace_id="ws1",
        runtime=tmp_path / "run",
        tmp=tmp_path / "tmp",
        network=Network(),
        images=ImageAccess(ImageStore(tmp_path / "images")),
        sink=Recorder(),
    )
    backend = LxcBackend(ctx)
    image = tmp_path / "image-root"
    (image / "etc/sandbox").mkdir(parents=True)
    (image / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv/app:/bin/sh\n")
    (image / "etc/sandbox/app.env").write_text('GREETING="hello"\n')
    monkeypatch.setattr(backend, "_ids", lambda: (IdRange(UID, 65536), IdRange(UID, 65536)))
    monkeypatch.setattr(backend, "_image_root", lambda digest: image)
    monkeypatch.setattr(backend, "prepare_image", lambda digest: None)
    return backend


@pytest.fixture
def fake_lxc_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """lxc-attach records its argv; lxc-info says STOPPED."""
    d = tmp_path / "bin"
    d.mkdir()
    log = tmp_path / "attach.args"
    (d / "lxc-attach").write_text(f'#!/bin/sh\nfor a; do echo "$a"; done > {log}\n')
    (d / "lxc-info").write_text("#!/bin/sh\necho STOPPED\n")
    for p in d.iterdir():
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return log


def make_instance(lxc: LxcBackend, name: str) -> Path:
    d = lxc.lxcpath / name
    (d / "delta0/etc/sandbox").mkdir(parents=True)
    (d / "config").write_text("lxc.uts.name = x\n")
    (d / "sandbox.json").write_text('{"image": "sha256:' + "a" * 64 + '", "address": "10.0.3.4"}')
    return d / "delta0"


def test_clone_does_not_write_through_a_planted_hostname_link(
    lxc: LxcBackend, fake_lxc_tools: Path, host: Path
) -> None:
    """`sandbox exec staging-1 -- ln -sf /host/file /etc/hostname; sandbox clone staging-1 dev-c`."""
    upper = make_instance(lxc, "staging-1-0")
    (upper / "etc/hostname").symlink_to(host / "hostname")
    before = host_state(host)
    lxc.clone("staging-1-0", spec("dev-c-0"))
    assert host_state(host) == before
    new = lxc.lxcpath / "dev-c-0" / "delta0" / "etc/hostname"
    assert new.read_text() == "dev-c-0\n" and not new.is_symlink()
    assert (upper / "etc/hostname").is_symlink()  # the source instance keeps its own link


def test_exec_ignores_a_planted_app_env_link(lxc: LxcBackend, fake_lxc_tools: Path, host: Path) -> None:
    """`ln -sf /host/secret.env /etc/sandbox/app.env` must not carry the host file into the env."""
    upper = make_instance(lxc, "staging-1-0")
    (upper / "etc/sandbox/app.env").symlink_to(host / "secret.env")
    (upper / "etc/sandbox/instance.env").write_text('SANDBOX_ENV="staging-1"\n')
    with deadline():
        lxc.exec("staging-1-0", ["true"])
    args = fake_lxc_tools.read_text()
    assert "HOST_SECRET" not in args
    assert "SANDBOX_ENV=staging-1" in args
    assert "GREETING=hello" not in args  # the instance's own link hides the image's file
    rec = lxc.sink
    assert isinstance(rec, Recorder)
    assert any(e.kind == "warning" and "app.env" in e.message for e in rec.events)


@pytest.mark.parametrize("kind", ["zero", "fifo", "link"])
def test_exec_as_user_with_a_hostile_passwd(
    lxc: LxcBackend, fake_lxc_tools: Path, host: Path, kind: str
) -> None:
    """/etc/passwd -> /dev/zero must not exhaust memory, a FIFO must not hang, a link is not followed."""
    upper = make_instance(lxc, "staging-1-0")
    passwd = upper / "etc/passwd"
    if kind == "zero":
        os.mknod(passwd, 0o644 | stat.S_IFCHR, os.stat("/dev/zero").st_rdev)
    elif kind == "fifo":
        os.mkfifo(passwd)
    else:
        (host / "passwd").write_text("app:x:0:0::/root:/bin/sh\n")  # a host file making app root
        passwd.symlink_to(host / "passwd")
    with deadline(), pytest.raises(BackendError, match="cannot read /etc/passwd of staging-1-0"):
        lxc.exec("staging-1-0", ["id"], user="app")
    assert not fake_lxc_tools.exists()


def test_a_whiteout_in_the_upper_dir_hides_the_image_file(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (upper / "etc").mkdir(parents=True)
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert read_layered([upper, lower], "etc/passwd", "i") == b"root:x:0:0::/root:/bin/sh\n"
    os.mknod(upper / "etc/passwd", stat.S_IFCHR, 0)
    assert read_layered([upper, lower], "etc/passwd", "i") is None


# -- build time: the app layer, the VM flavour, normalization -----------------------------------


def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc", "home", "usr/lib", "srv"):
        (root / d).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    return root


def recipe_with_ssh_link(tmp_path: Path, host: Path) -> Any:
    ws = tmp_path / "ws"
    (ws / "recipes/home").mkdir(parents=True)
    (ws / "recipes/home/.ssh").symlink_to(host / "ssh")  # copied as a link into /home/app/.ssh
    (ws / "recipes/home/.profile").write_text("# app\n")
    (ws / "recipes/alice.pub").write_text(f"ssh-ed25519 {blob('ssh-ed25519')} alice\n")
    (ws / "recipes/web.yaml").write_text(
        textwrap.dedent(
            """\
            name: web
            users: [{name: app}]
            files:
              - {src: home/, dest: /home/app/, owner: app}
            keys: {app: [alice.pub]}
            """
        )
    )
    return load_recipe(ws / "recipes/web.yaml")


def test_keys_never_follow_a_planted_ssh_link(tmp_path: Path, host: Path) -> None:
    root = image_root(tmp_path)
    loaded = recipe_with_ssh_link(tmp_path, host)
    before = host_state(host)
    applayer._files(root, loaded)
    assert (root / "home/app/.ssh").is_symlink()  # what files: asked for, as a link in the image
    with pytest.raises(BuildError, match=r"keys\.app: /home/app/\.ssh in the image is not a directory"):
        applayer._keys(root, loaded)
    assert host_state(host) == before


def test_files_never_write_through_links_to_the_host(tmp_path: Path, host: Path) -> None:
    root = image_root(tmp_path)
    (root / "srv/out").symlink_to(host)  # absolute: resolves to root/<host path>, not the host
    (root / "etc/cron.d").symlink_to("../../host")  # relative: climbs out, clamped at the root
    ws = tmp_path / "ws2"
    (ws / "recipes").mkdir(parents=True)
    (ws / "recipes/a.txt").write_text("payload\n")
    (ws / "recipes/web.yaml").write_text(
        "name: web\npackages: [cron]\nusers: [{name: app}]\n"
        "files:\n  - {src: a.txt, dest: /srv/out/secret.env}\n  - {src: a.txt, dest: /etc/cron.d/hostname}\n"
        "cron:\n  - {name: x, command: /bin/true}\n"
    )
    loaded = load_recipe(ws / "recipes/web.yaml")
    before = host_state(host)
    applayer._files(root, loaded)
    applayer._cron(root, loaded)
    assert host_state(host) == before
    assert (root / str(host).lstrip("/") / "secret.env").read_text() == "payload\n"
    assert (root / "host/hostname").read_text() == "payload\n"
    assert (root / "host/x").read_text().startswith("# sandbox cron job x")


def test_wh_names_are_refused_in_a_dest_and_a_copied_tree(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "recipes/tree").mkdir(parents=True)
    (ws / "recipes/a").write_text("x")
    (ws / "recipes/web.yaml").write_text("name: web\nfiles:\n  - {src: a, dest: /etc/.wh.passwd}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(ws / "recipes/web.yaml")
    assert "web.yaml:3" in str(e.value) and "files[0].dest" in str(e.value) and ".wh." in str(e.value)
    (ws / "recipes/tree/.wh.passwd").write_text("")
    (ws / "recipes/web.yaml").write_text("name: web\nfiles:\n  - {src: tree/, dest: /etc/}\n")
    with pytest.raises(BuildError, match="overlay whiteout"):
        applayer._files(image_root(tmp_path), load_recipe(ws / "recipes/web.yaml"))


def test_vm_files_stay_in_the_image(tmp_path: Path, host: Path) -> None:
    root = image_root(tmp_path)
    (root / "etc/systemd").symlink_to(host)  # VM_FILES and VM_LINKS go below etc/systemd/system
    (root / "usr/local").mkdir(parents=True)
    (root / "usr/local/sbin").symlink_to("../../../host")
    before = host_state(host)
    write_vm_files(root)
    assert host_state(host) == before
    assert (root / "host/sandbox-instance").stat().st_mode & 0o111
    assert (root / str(host).lstrip("/") / "system/sandbox-instance.service").is_file()


def test_vm_boot_files_are_not_taken_from_the_host(tmp_path: Path, host: Path) -> None:
    root = image_root(tmp_path)
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-9").symlink_to(host / "secret.env")
    (root / "boot/initrd.img-9").write_bytes(b"initrd")
    with pytest.raises(ImageFormatError, match="cannot take /boot/vmlinuz-9 out of the VM image"):
        copy_boot_file(root, "vmlinuz-", tmp_path / "kernel")
    copy_boot_file(root, "initrd.img-", tmp_path / "initrd")
    assert (tmp_path / "initrd").read_bytes() == b"initrd"


def test_clean_rootfs_touches_nothing_on_the_host(tmp_path: Path, host: Path) -> None:
    root = image_root(tmp_path)
    (root / "etc/apt").symlink_to(host)  # sources.list would land in the host dir
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/x").symlink_to(host / "secret.env")
    (root / "var/tmp").symlink_to(host)
    (root / "etc/hostname").symlink_to(host / "hostname")
    before = host_state(host)
    clean_rootfs(root)
    assert host_state(host) == before
    assert not os.path.lexists(root / "etc/hostname") and not os.path.lexists(root / "var/log/x")
    assert (root / str(host).lstrip("/")).is_dir() is False  # nothing was made for the link target
    assert SOURCES_NOTE not in (host / "secret.env").read_bytes()


class _FakePackages:
    def __init__(self) -> None:
        self.repo: Path | None = None

    def make_repo(self, lock: Any, repo: Path) -> str:
        (repo / "pool").mkdir()
        (repo / "pool" / "x.deb").write_bytes(b"deb")
        self.repo = repo
        return f"deb [trusted=yes] file://{repo} bookworm main"


def _fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    from sandbox.build import vmflavour

    seen: list[str] = []

    def run_in_root(root: Path, argv: list[str], env: Any = None, **_: Any) -> Any:
        seen.append((root / "run/sbx-sources.list").read_text())
        assert (root / "run/sbx-repo/pool/x.deb").read_bytes() == b"deb"
        (root / "boot").mkdir(exist_ok=True)
        (root / "boot/vmlinuz-1").write_bytes(b"k")
        (root / "boot/initrd.img-1").write_bytes(b"i")
        return subprocess_ok()

    monkeypatch.setattr(vmflavour, "run_in_root", run_in_root)
    flavour = vmflavour.VmFlavour.__new__(vmflavour.VmFlavour)
    flavour.packages = _FakePackages()  # type: ignore[assignment]
    lock = vmflavour.Lock("web", "0" * 64, "bookworm", "minbase", "amd64", 0, ())
    return (flavour, lock), seen


def subprocess_ok() -> Any:
    import subprocess

    return subprocess.CompletedProcess([], 0, "", "")


def test_vm_repo_is_a_fresh_dir_of_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_root(tmp_path)
    (root / "run").mkdir()
    (flavour, lock), seen = _fake_install(tmp_path, monkeypatch)
    flavour._install(root, lock, 0)
    assert seen and all("file:///run/sbx-repo bookworm main" in s for s in seen)
    assert not (root / "run/sbx-repo").exists() and not (root / "run/sbx-sources.list").exists()


@pytest.mark.parametrize("planted", ["run-link", "repo-exists"])
def test_vm_repo_never_lands_on_the_host(
    tmp_path: Path, host: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    root = image_root(tmp_path)
    if planted == "run-link":
        (root / "run").symlink_to(host)
    else:
        (root / "run").mkdir()
        (root / "run/sbx-repo").symlink_to(host)
    (flavour, lock), _ = _fake_install(tmp_path, monkeypatch)
    before = host_state(host)
    with pytest.raises(BuildError):
        flavour._install(root, lock, 0)
    assert host_state(host) == before
