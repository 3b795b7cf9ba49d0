"""build.lock (Lock JSON, read_lock errors, variant selections) and build.base.mmdebstrap_argv."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.build.base import mmdebstrap_argv
from sandbox.build.hostapt import PackageRecord
from sandbox.build.lock import LOCK_VERSION, VARIANT_SELECTION, Lock, lock_path, read_lock, write_lock
from sandbox.errors import LockError


def rec(name: str, version: str = "1.0-1", sha: str | None = None) -> PackageRecord:
    return PackageRecord(
        name=name,
        version=version,
        architecture="amd64",
        sha256=sha if sha is not None else (name.encode().hex() * 64)[:64],
        size=1234,
        filename=f"{name}_{version.replace(':', '%3a')}_amd64.deb",  # as in the pool
    )


def make_lock(*names: str) -> Lock:
    return Lock(
        recipe="web",
        inputs="f" * 64,
        suite="bookworm",
        variant="minbase",
        architecture="amd64",
        source_date_epoch=1_700_000_000,
        packages=tuple(rec(n) for n in sorted(names or ("base-files", "libc6", "nginx"))),
    )


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "web.lock"
    p.write_text(text)
    return p


def test_roundtrip(tmp_path: Path) -> None:
    lock = make_lock()
    path = tmp_path / "recipes" / "web.lock"
    write_lock(path, lock)
    assert path.read_text() == lock.to_json()
    back = read_lock(path)
    assert back == lock
    assert back.digest == lock.digest


def test_to_json_is_plain_json_one_package_per_line() -> None:
    text = make_lock().to_json()
    doc = json.loads(text)
    assert doc["lock_version"] == LOCK_VERSION
    assert doc["source_date_epoch"] == 1_700_000_000
    assert [p["name"] for p in doc["packages"]] == ["base-files", "libc6", "nginx"]
    pkg_lines = [ln for ln in text.splitlines() if ln.startswith('  {"')]
    assert len(pkg_lines) == 3
    assert text.endswith("}\n")


def test_to_json_with_no_packages_is_valid() -> None:
    lock = replace(make_lock(), packages=())
    assert json.loads(lock.to_json())["packages"] == []


def test_digest_stable_and_order_independent() -> None:
    a = make_lock("nginx", "libc6", "bash")
    b = replace(a, packages=tuple(reversed(a.packages)))
    assert a.digest == b.digest == make_lock("bash", "libc6", "nginx").digest
    assert len(a.digest) == 64
    assert a.digest != replace(a, source_date_epoch=1).digest
    assert a.digest != replace(a, packages=(*a.packages[:-1], rec("nginx", "1.0-2"))).digest


def test_package_versions() -> None:
    lock = replace(make_lock(), packages=(rec("aa", "1"), rec("bb", "2:3.4-5")))
    assert lock.package_versions == {"aa": "1", "bb": "2:3.4-5"}


def test_lock_path() -> None:
    assert lock_path(Path("/ws/recipes/web.yaml")) == Path("/ws/recipes/web.lock")


def _assert_lock_error(path: Path) -> LockError:
    with pytest.raises(LockError) as info:
        read_lock(path)
    assert "malformed" in info.value.message
    assert info.value.hint is not None and "sandbox lock web" in info.value.hint
    return info.value


def test_malformed_json(tmp_path: Path) -> None:
    _assert_lock_error(write(tmp_path, '{"lock_version": 1, "packages": ['))


def test_not_an_object(tmp_path: Path) -> None:
    _assert_lock_error(write(tmp_path, "[1, 2, 3]\n"))


@pytest.mark.parametrize("key", ["recipe", "inputs", "suite", "variant", "architecture", "source_date_epoch"])
def test_missing_key(tmp_path: Path, key: str) -> None:
    doc = json.loads(make_lock().to_json())
    del doc[key]
    err = _assert_lock_error(write(tmp_path, json.dumps(doc)))
    assert key in err.message


def test_missing_package_field(tmp_path: Path) -> None:
    doc = json.loads(make_lock().to_json())
    del doc["packages"][0]["sha256"]
    _assert_lock_error(write(tmp_path, json.dumps(doc)))


def test_unknown_package_field(tmp_path: Path) -> None:
    doc = json.loads(make_lock().to_json())
    doc["packages"][0]["url"] = "http://x"
    _assert_lock_error(write(tmp_path, json.dumps(doc)))


def test_wrong_lock_version(tmp_path: Path) -> None:
    doc = json.loads(make_lock().to_json())
    doc["lock_version"] = 99
    err = _assert_lock_error(write(tmp_path, json.dumps(doc)))
    assert "99" in err.message


def test_bad_sde(tmp_path: Path) -> None:
    doc = json.loads(make_lock().to_json())
    doc["source_date_epoch"] = "yesterday"
    _assert_lock_error(write(tmp_path, json.dumps(doc)))


def _with_package(tmp_path: Path, **fields: object) -> Path:
    doc = json.loads(make_lock().to_json())
    doc["packages"][0].update(fields)
    return write(tmp_path, json.dumps(doc))


@pytest.mark.parametrize(
    "fields", [{"sha256": "abc"}, {"filename": "../../etc/passwd"}, {"filename": ".hidden.deb"}]
)
def test_bad_package_entry_raises_lockerror(tmp_path: Path, fields: dict[str, object]) -> None:
    with pytest.raises(LockError) as info:
        read_lock(_with_package(tmp_path, **fields))
    assert "base-files" in info.value.message


def test_bad_sha_has_hint(tmp_path: Path) -> None:
    with pytest.raises(LockError) as info:
        read_lock(_with_package(tmp_path, sha256="abc"))
    assert info.value.hint is not None and "sandbox lock web" in info.value.hint


def test_non_hex_sha_rejected(tmp_path: Path) -> None:
    with pytest.raises(LockError):
        read_lock(_with_package(tmp_path, sha256="z" * 64))


def test_missing_file_is_filenotfound(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_lock(tmp_path / "nope.lock")


def test_variant_selection() -> None:
    assert set(VARIANT_SELECTION) == {"essential", "apt", "required", "minbase", "important", "standard"}
    assert VARIANT_SELECTION["minbase"] == ["?essential", "?priority(required)", "apt"]
    assert VARIANT_SELECTION["essential"] == ["?essential"]
    for selection in VARIANT_SELECTION.values():
        assert selection[0] == "?essential"
    assert "?priority(standard)" in VARIANT_SELECTION["standard"]


# -- mmdebstrap_argv ------------------------------------------------------


def test_mmdebstrap_argv(tmp_path: Path) -> None:
    lock = replace(make_lock(), packages=(rec("zlib1g"), rec("apt"), rec("libc6")), variant="minbase")
    source = "deb [trusted=yes] copy:///tmp/repo ./"
    argv = mmdebstrap_argv(lock, tmp_path / "rootfs", source)
    assert argv[0] == "mmdebstrap"
    assert "--variant=minbase" in argv
    assert "--architectures=amd64" in argv
    assert "--mode=root" in argv and "--format=directory" in argv
    assert "--dpkgopt=force-unsafe-io" in argv
    assert "--include=apt,libc6,zlib1g" in argv
    assert argv[-3:] == ["bookworm", str(tmp_path / "rootfs"), source]
    assert argv[-1] == source
    assert sum(a.startswith("--include=") for a in argv) == 1


def test_mmdebstrap_argv_is_pure_and_order_independent(tmp_path: Path) -> None:
    a = make_lock("bb", "aa", "cc")
    b = replace(a, packages=tuple(reversed(a.packages)))
    assert mmdebstrap_argv(a, tmp_path, "x") == mmdebstrap_argv(b, tmp_path, "x")
