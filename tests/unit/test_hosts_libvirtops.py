"""libvirt on production hosts, the host's side, without libvirtd.

The host agent's `libvirt` op (run as `python -m sandbox.hostagent`, its root SANDBOX_HOST_ROOT in
tmp) refuses every malformed or hostile request before it touches anything; it makes a VM's files
from the host's own store with the same VmFiles and checked unpacker as the control machine, and
refuses an image that is not what it claims, a layer path that escapes, a kernel that is a link out
of the image; it needs nothing but the standard library. (The control side: test_hosts_libvirt.py.)

Nothing here runs libvirtd, qemu or iptables, nor writes outside the test's tmp dir.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.remotelibvirt import vm_instance
from sandbox.store import ImageStore
from sandbox.store.layers import merge_indexes
from tests.unit.imagefactory import make_image, make_tree, put_layer
from tests.unit.test_hosts_agent import REPO, files_under, run_op

DIGEST = "sha256:" + "ab" * 32
CTX = {"ws": "w1", "network": {"bridge": "sbxtest0", "subnet": "10.213.0.0/24"}}
SPEC = {"name": "prod-0", "env": "prod", "index": 0, "image": DIGEST, "address": "10.213.0.2", "env_vars": {}}
TCG = {"SANDBOX_LIBVIRT_ACCEL": "tcg"}  # no KVM probe (it would start qemu)


def call(root: Path, method: str, ctx: Any = None, **args: Any) -> tuple[int, dict[str, Any], str]:
    return run_op(root, {"ctx": ctx or CTX, "method": method, "args": args}, "libvirt", env=TCG)


# -- malformed requests --------------------------------------------------------------------------------

BAD = [
    ({"method": "exec"}, "unknown method"),  # commands go through the guest agent, never the host's shell
    ({"method": "snapshot"}, "unknown method"),
    ({"method": "__init__"}, "unknown method"),
    ({"method": "_sink"}, "unknown method"),
    ([1, 2], "unknown method"),
    ({"method": "start", "args": {"name": "../x"}}, "bad name"),
    ({"method": "start", "args": {}}, "bad name"),
    ({"method": "destroy", "args": {"name": "-rf"}}, "bad name"),
    ({"method": "destroy", "args": {"name": "a/../../b"}}, "bad name"),
    ({"method": "destroy", "args": {"name": "x\n"}}, "bad name"),
    ({"method": "prepare_image", "args": {"digest": DIGEST, "vm": "sha256:../../etc/passwd"}}, "bad vm"),
    ({"method": "prepare_image", "args": {"digest": DIGEST}}, "bad vm"),
    ({"method": "prepare_image", "args": {"digest": "../x", "vm": DIGEST}}, "bad digest"),
    ({"method": "prepare_image", "args": {"digest": DIGEST.upper(), "vm": DIGEST}}, "bad digest"),
    ({"method": "forget_image", "args": {"digest": DIGEST + "/.."}}, "bad digest"),
    ({"method": "create", "args": {"spec": "x"}}, "bad spec"),
    ({"method": "create", "args": {"spec": {**SPEC, "name": "../../x"}}}, "bad name"),
    ({"method": "create", "args": {"spec": {**SPEC, "image": "/etc/passwd"}}}, "bad image"),
    ({"method": "create", "args": {"spec": {**SPEC, "address": "10.9.0.2"}}}, "bad address"),
    ({"method": "create", "args": {"spec": {**SPEC, "address": "10.213.0.2 ip=x"}}}, "bad address"),
    ({"method": "create", "args": {"spec": {**SPEC, "env_vars": {"A\nB": "1"}}}}, "bad env_vars"),
    ({"method": "create", "args": {"spec": SPEC, "publish": {"port": 0, "app_port": 8000}}}, "bad publish"),
    ({"method": "create", "args": {"spec": SPEC, "publish": "20002"}}, "bad publish"),
    ({"method": "create", "args": {"spec": SPEC, "publish": {"port": "1; x", "app_port": 1}}}, "bad port"),
    ({"method": "images", "args": ["x"]}, "bad args"),
    ({"method": "images", "ctx": {"ws": "../../etc"}}, "bad ws"),
    ({"method": "check", "ctx": {"ws": "w1", "network": {"bridge": "br0\nx"}}}, "bad bridge"),
    ({"method": "check", "ctx": {"ws": "w1", "network": {"subnet": "10.0.0.0/8\n"}}}, "bad subnet"),
]


@pytest.mark.parametrize(("request_", "error"), BAD, ids=[f"{i}-{e}" for i, (_, e) in enumerate(BAD)])
def test_the_libvirt_op_refuses_malformed_requests(tmp_path: Path, request_: Any, error: str) -> None:
    root = tmp_path / "host"
    if isinstance(request_, dict):
        request_ = {"ctx": CTX, **request_}
    code, answer, stderr = run_op(root, request_, "libvirt", env=TCG)
    assert code == 3, (answer, stderr)
    assert answer["error"] == "BadRequest" and error in answer["message"], answer
    made = files_under(tmp_path)
    assert set(made) <= {"host", "host/ws", "host/ws/w1"}, made


def test_the_libvirt_op_needs_only_the_standard_library() -> None:
    """It runs on the host's own python3: no libvirt-python (or any other package) there."""
    code = "import sandbox.hostagent.libvirtops, sandbox.hostagent.hostcheck as h; h._libvirt()"
    p = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr


def test_the_logs_op_refuses_a_bad_name(tmp_path: Path) -> None:
    import base64
    import json

    arg = base64.urlsafe_b64encode(json.dumps({"ctx": CTX, "args": {"name": "../../etc/shadow"}}).encode())
    code, answer, _ = run_op(tmp_path / "host", None, "libvirt-logs", arg.decode())
    assert code == 3 and answer["error"] == "BadRequest" and "bad name" in answer["message"], answer
    code, answer, _ = run_op(tmp_path / "host", None, "libvirt-logs", "not base64 json")
    assert code == 3 and answer["error"] == "AgentUsage", answer


# -- the VM's files, from the host's own store ---------------------------------------------------------

BOOT = {"boot/vmlinuz-6.1": b"kernel\n", "boot/initrd.img-6.1": b"initrd\n", "etc/fstab": b"/dev/vda /\n"}


def need_tools() -> None:
    missing = [t for t in ("mkfs.ext4", "qemu-img") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (apt-get install e2fsprogs qemu-utils)")


def vm_image(
    store: ImageStore, work: Path, vm_layer: tuple[str, int, dict[str, Any]], **extra: Any
) -> tuple[str, str]:
    """(image, its VM flavour) in `store`: the image plus `vm_layer`, as sandbox/build/vmflavour.py does."""
    img = make_image(store, work)
    layer, size, index = vm_layer
    layers = [*img.manifest["layers"], {"kind": "vm", "digest": layer, "size": size}]
    base = [store.layer_index(x["digest"]) for x in img.manifest["layers"]]
    manifest = {
        **img.manifest,
        "flavour": "vm",
        "derives_from": img.digest,
        "layers": layers,
        "files": merge_indexes([*base, index]),
    }
    return img.digest, store.put_manifest(manifest)


def test_a_vms_files_are_made_on_the_host_from_its_store(tmp_path: Path) -> None:
    need_tools()
    root = tmp_path / "host"
    store = ImageStore(root / "store")
    digest, vm = vm_image(store, tmp_path / "work", put_layer(store, make_tree(tmp_path / "vm", BOOT)))
    code, answer, err = call(root, "prepare_image", digest=digest, vm=vm)
    assert code == 0, (answer, err)
    assert call(root, "images")[1]["ok"]["result"] == [digest]
    code, answer, err = call(root, "create", spec={**SPEC, "image": digest})
    assert code == 0, (answer, err)
    made = vm_instance(answer["ok"]["result"], "h1")
    assert made.domain_type == "qemu"  # SANDBOX_LIBVIRT_ACCEL=tcg
    inst = root / "ws" / "w1" / "libvirt" / "instances" / "prod-0"
    assert Path(made.disk) == inst / "disk.qcow2" and Path(made.console_log).parent == inst
    assert Path(made.kernel).read_bytes() == b"kernel\n" and Path(made.initrd).read_bytes() == b"initrd\n"
    info = subprocess.run(["qemu-img", "info", made.disk], capture_output=True, text=True, check=True).stdout
    assert "backing file:" in info and "root.raw" in info
    assert Path(made.config_disk).is_file()
    code, answer, _ = call(root, "create", spec={**SPEC, "image": digest})  # the same name again
    assert code == 3 and "already exists" in answer["message"]
    assert call(root, "destroy", name="prod-0")[0] == 0 and not inst.exists()
    assert call(root, "forget_image", digest=digest)[0] == 0
    assert call(root, "images")[1]["ok"]["result"] == []


def test_an_image_that_is_not_what_it_claims_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "host"
    store = ImageStore(root / "store")
    layer = put_layer(store, make_tree(tmp_path / "vm", BOOT))
    digest, vm = vm_image(store, tmp_path / "work", layer)
    other = make_image(store, tmp_path / "work2", app_files={"srv/other.py": b"x\n"}).digest
    code, answer, _ = call(root, "prepare_image", digest=other, vm=vm)  # vm derives from another image
    assert code == 3 and "is not the VM flavour" in answer["message"], answer
    code, answer, _ = call(root, "prepare_image", digest=digest, vm=digest)  # not a VM flavour at all
    assert code == 3 and "is not the VM flavour" in answer["message"], answer
    code, answer, _ = call(root, "prepare_image", digest=digest, vm="sha256:" + "cd" * 32)
    assert code == 3 and answer["error"] == "VmImageMissing" and "shipped first" in answer["hint"], answer
    code, answer, _ = call(root, "create", spec={**SPEC, "image": digest})  # never prepared
    assert code == 3 and "no VM disk" in answer["message"], answer
    assert not (root / "ws" / "w1" / "libvirt" / "images").exists()


def test_a_kernel_that_links_out_of_the_image_is_refused(tmp_path: Path) -> None:
    need_tools()
    root = tmp_path / "host"
    store = ImageStore(root / "store")
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    tree = make_tree(tmp_path / "vm", {k: v for k, v in BOOT.items() if "vmlinuz" not in k})
    os.symlink(str(secret), tree / "boot" / "vmlinuz-6.1")  # resolved in the image: not there
    digest, vm = vm_image(store, tmp_path / "work", put_layer(store, tree))
    code, answer, err = call(root, "prepare_image", digest=digest, vm=vm)
    assert code == 3 and "vmlinuz" in answer["message"], (answer, err)
    left = [p for p in (root / "ws").rglob("*") if p.is_file()]
    assert all(b"host secret" not in p.read_bytes() for p in left if p.stat().st_size < 1 << 20)
    assert not list((root / "ws" / "w1" / "libvirt" / "images").glob("*/vmlinuz"))


def test_a_layer_path_that_escapes_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "host"
    store = ImageStore(root / "store")

    def evil(f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w|") as tar:
            data = b"escaped\n"
            info = tarfile.TarInfo("../../../../escaped")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    layer, size = store.put_blob(evil)[:2]
    digest, vm = vm_image(store, tmp_path / "work", (layer, size, {}))
    code, answer, err = call(root, "prepare_image", digest=digest, vm=vm)
    assert code == 3 and "escapes" in answer["message"], (answer, err)
    assert not [p for p in tmp_path.parent.rglob("escaped") if p.is_file()]
