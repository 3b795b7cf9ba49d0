"""build.rootfs: read_ids / home_of (through saferoot, chroot rules)."""

from __future__ import annotations

from pathlib import Path

from sandbox.build.rootfs import home_of, read_ids

# -- read_ids / home_of ---------------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
app:x:1000:1001:App,,,:/srv/app:/bin/bash
broken line without fields
bad:x:notanumber:1:::
"""
GROUP = """\
root:x:0:
www-data:x:33:
app:x:1001:
sudo:x:27:app,deploy
"""


def test_read_ids_passwd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    ids = read_ids(tmp_path, "passwd")
    assert ids == {"root": (0, 0), "daemon": (1, 1), "www-data": (33, 33), "app": (1000, 1001)}


def test_read_ids_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text(GROUP)
    assert read_ids(tmp_path, "group") == {
        "root": (0, 0),
        "www-data": (33, 33),
        "app": (1001, 1001),
        "sudo": (27, 27),
    }


def test_read_ids_missing_file(tmp_path: Path) -> None:
    assert read_ids(tmp_path, "passwd") == {}


def test_home_of(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    assert home_of(tmp_path, "app") == "/srv/app"
    assert home_of(tmp_path, "root") == "/root"
    assert home_of(tmp_path, "nobody") is None


def test_read_ids_never_reads_a_host_file(tmp_path: Path) -> None:
    host = tmp_path / "host-passwd"
    host.write_text("app:x:0:0::/root:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(host)  # absolute: looked up inside the image, where it is absent
    assert read_ids(root, "passwd") == {}
    assert home_of(root, "app") is None
