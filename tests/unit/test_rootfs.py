"""build.rootfs: resolve_in_root follows image symlinks inside the root; read_ids / home_of."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.build.rootfs import RootEscape, home_of, read_ids, resolve_in_root
from sandbox.errors import BuildError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small usr-merged image root with the usual symlinks."""
    r = tmp_path / "root"
    for d in ("usr/bin", "usr/lib", "etc/nginx", "run/lock", "var/www", "srv/data", "opt/real"):
        (r / d).mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "lib").symlink_to("usr/lib")
    (r / "var/run").symlink_to("/run")
    (r / "var/lock").symlink_to("../run/lock")
    (r / "opt/app").symlink_to("real")
    return r


def test_plain_path(root: Path) -> None:
    assert resolve_in_root(root, "/etc/nginx/nginx.conf") == root / "etc/nginx/nginx.conf"
    assert resolve_in_root(root, "etc//nginx/./site") == root / "etc/nginx/site"


def test_nonexistent_path_is_not_an_error(root: Path) -> None:
    assert resolve_in_root(root, "/new/dir/file") == root / "new/dir/file"


def test_usr_merge_relative_symlink_followed(root: Path) -> None:
    assert resolve_in_root(root, "/bin/tool") == root / "usr/bin/tool"
    assert resolve_in_root(root, "/lib/x/y.so") == root / "usr/lib/x/y.so"
    assert resolve_in_root(root, "/opt/app/config.py") == root / "opt/real/config.py"


def test_relative_symlink_with_dotdot_inside_root(root: Path) -> None:
    assert resolve_in_root(root, "/var/lock/app.lock") == root / "run/lock/app.lock"


def test_absolute_symlink_resolved_inside_root(root: Path) -> None:
    assert resolve_in_root(root, "/var/run/app.pid") == root / "run/app.pid"


def test_absolute_symlink_to_etc_stays_in_root(root: Path) -> None:
    (root / "srv/conf").symlink_to("/etc")
    got = resolve_in_root(root, "/srv/conf/passwd")
    assert got == root / "etc/passwd"
    assert got != Path("/etc/passwd")


def test_absolute_symlink_to_root(root: Path) -> None:
    (root / "srv/top").symlink_to("/")
    assert resolve_in_root(root, "/srv/top/etc/hosts") == root / "etc/hosts"


def test_chain_of_symlinks(root: Path) -> None:
    (root / "srv/a").symlink_to("b")
    (root / "srv/b").symlink_to("/var/run")  # → /run inside the root
    assert resolve_in_root(root, "/srv/a/x") == root / "run/x"


def test_last_component_symlink_not_followed(root: Path) -> None:
    (root / "etc/evil").symlink_to("/etc/shadow")
    assert resolve_in_root(root, "/etc/evil") == root / "etc/evil"
    assert resolve_in_root(root, "/bin") == root / "bin"


def test_dotdot_inside_root_is_fine(root: Path) -> None:
    assert resolve_in_root(root, "/etc/nginx/../hosts") == root / "etc/hosts"
    # '..' after a symlink applies to where the link points, as in a chroot
    assert resolve_in_root(root, "/bin/../lib/x") == root / "usr/lib/x"


@pytest.mark.parametrize(
    "dest", ["../..", "/..", "/../etc/passwd", "etc/../../x", "/srv/../../../etc/shadow"]
)
def test_dotdot_above_root_raises(root: Path, dest: str) -> None:
    with pytest.raises(RootEscape, match="climbs above the image root"):
        resolve_in_root(root, dest)


def test_relative_symlink_above_root_raises(root: Path) -> None:
    (root / "srv/up").symlink_to("../../host")
    with pytest.raises(RootEscape, match="points outside the image root"):
        resolve_in_root(root, "/srv/up/file")


def test_relative_symlink_deep_above_root_raises(root: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (root / "etc/nginx/sneaky").symlink_to("../../../outside")
    with pytest.raises(RootEscape):
        resolve_in_root(root, "/etc/nginx/sneaky/x")


def test_symlink_dotdot_via_absolute_target_raises(root: Path) -> None:
    (root / "srv/abs-up").symlink_to("/../../x")
    with pytest.raises(RootEscape):
        resolve_in_root(root, "/srv/abs-up/y")


def test_symlink_loop_raises(root: Path) -> None:
    (root / "srv/loop1").symlink_to("loop2")
    (root / "srv/loop2").symlink_to("loop1")
    with pytest.raises(RootEscape, match="too many levels"):
        resolve_in_root(root, "/srv/loop1/x")


def test_self_loop_raises(root: Path) -> None:
    (root / "srv/self").symlink_to("/srv/self")
    with pytest.raises(RootEscape):
        resolve_in_root(root, "/srv/self/x")


def test_rootescape_is_a_builderror() -> None:
    assert issubclass(RootEscape, BuildError)


def test_root_given_through_symlink(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert resolve_in_root(alias, "/bin/sh") == alias / "usr/bin/sh"


@pytest.mark.parametrize("dest", ["/", "etc/.."])
def test_dest_that_is_the_root(root: Path, dest: str) -> None:
    assert resolve_in_root(root, dest) == root


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


def test_resolve_does_not_touch_the_filesystem(root: Path) -> None:
    before = sorted(str(p) for p in root.rglob("*"))
    resolve_in_root(root, "/a/b/c/d")
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert os.path.lexists(root / "bin")
