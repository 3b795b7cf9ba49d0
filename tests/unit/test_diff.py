"""store.diff.diff_manifests: packages, files, app and users between two manifests."""

from __future__ import annotations

import copy
from typing import Any

from sandbox.store.diff import diff_manifests


def file(sha: str = "a" * 64, mode: str = "0644", **kw: Any) -> dict[str, Any]:
    return {"type": "file", "mode": mode, "uid": 0, "gid": 0, "size": 3, "sha256": sha, **kw}


def manifest(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "packages": {"bash": "5.2-1", "libc6": "2.36-9", "nginx": "1.22-1"},
        "files": {
            "/": {"type": "dir", "mode": "0755", "uid": 0, "gid": 0},
            "/etc/nginx/nginx.conf": file(),
            "/srv/app/main.py": file("b" * 64),
            "/bin": {"type": "symlink", "target": "usr/bin", "mode": "0777", "uid": 0, "gid": 0},
            "/dev/null": {"type": "char", "dev": [1, 3], "mode": "0666", "uid": 0, "gid": 0},
        },
        "app": {"command": "gunicorn app:app", "port": 8000},
        "users": [{"name": "app"}],
    }
    m.update(over)
    return m


def test_identical_images_are_empty() -> None:
    a = manifest()
    d = diff_manifests("sha256:a", a, "sha256:b", copy.deepcopy(a))
    assert d.empty
    assert d.to_dict() == {
        "a": "sha256:a",
        "b": "sha256:b",
        "identical": True,
        "packages": {"added": {}, "removed": {}, "changed": {}},
        "files": {"added": [], "removed": [], "changed": []},
        "app_changed": False,
        "users_changed": False,
    }


def test_packages_added_removed_changed() -> None:
    a = manifest()
    b = manifest(packages={"bash": "5.2-2", "libc6": "2.36-9", "curl": "7.88-1", "zlib1g": "1.2"})
    d = diff_manifests("A", a, "B", b)
    assert d.packages_added == {"curl": "7.88-1", "zlib1g": "1.2"}
    assert d.packages_removed == {"nginx": "1.22-1"}
    assert d.packages_changed == {"bash": ("5.2-1", "5.2-2")}
    assert d.files_added == d.files_removed == d.files_changed == []
    assert not d.empty
    assert d.to_dict()["packages"]["changed"] == {"bash": {"from": "5.2-1", "to": "5.2-2"}}
    assert d.to_dict()["identical"] is False


def test_files_added_removed_changed_sorted() -> None:
    a = manifest()
    b = copy.deepcopy(a)
    del b["files"]["/srv/app/main.py"]
    b["files"]["/srv/app/z.py"] = file()
    b["files"]["/srv/app/a.py"] = file()
    b["files"]["/etc/nginx/nginx.conf"] = file("c" * 64, size=4)
    d = diff_manifests("A", a, "B", b)
    assert d.files_added == ["/srv/app/a.py", "/srv/app/z.py"]
    assert d.files_removed == ["/srv/app/main.py"]
    assert d.files_changed == ["/etc/nginx/nginx.conf"]
    assert d.packages_added == d.packages_removed == d.packages_changed == {}


def test_mode_owner_target_dev_and_type_changes_count() -> None:
    a = manifest()
    b = copy.deepcopy(a)
    b["files"]["/etc/nginx/nginx.conf"]["mode"] = "0600"
    b["files"]["/srv/app/main.py"]["uid"] = 1000
    b["files"]["/bin"]["target"] = "/usr/bin"
    b["files"]["/dev/null"]["dev"] = [1, 5]
    b["files"]["/"] = {"type": "symlink", "target": "x", "mode": "0755", "uid": 0, "gid": 0}
    d = diff_manifests("A", a, "B", b)
    assert d.files_changed == ["/", "/bin", "/dev/null", "/etc/nginx/nginx.conf", "/srv/app/main.py"]


def test_same_content_is_not_a_change() -> None:
    a = manifest()
    b = copy.deepcopy(a)
    # a hardlink that appears and keys outside the compared ones do not make a change
    b["files"]["/srv/app/main.py"]["hardlink"] = "/srv/app/other.py"
    b["files"]["/etc/nginx/nginx.conf"]["extra"] = "ignored"
    d = diff_manifests("A", a, "B", b)
    assert d.files_changed == []
    assert d.empty


def test_app_and_users_changes() -> None:
    a = manifest()
    d = diff_manifests("A", a, "B", manifest(app={"command": "gunicorn app:app", "port": 8001}))
    assert d.app_changed and not d.users_changed and not d.empty
    d = diff_manifests("A", a, "B", manifest(users=[{"name": "app"}, {"name": "deploy"}]))
    assert d.users_changed and not d.app_changed and not d.empty
    d = diff_manifests("A", a, "B", manifest(app=None))
    assert d.app_changed


def test_diff_is_directional() -> None:
    a = manifest()
    b = manifest(packages={**a["packages"], "curl": "1"})
    assert diff_manifests("A", a, "B", b).packages_added == {"curl": "1"}
    assert diff_manifests("B", b, "A", a).packages_removed == {"curl": "1"}
