"""Issue 10, class 4: a lock file is input too. Every field is checked (file:line), and no command
line built from lock or recipe data can carry an option (`safe_arg`, `--` before the operands)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.build.argv import safe_arg
from sandbox.build.base import mmdebstrap_argv
from sandbox.build.hostapt import PackageRecord, PrivateApt
from sandbox.build.lock import Lock, read_lock
from sandbox.errors import BuildError, LockError, SandboxError
from tests.unit.test_lock import make_lock


def planted(tmp_path: Path, key: str, value: object, package: int | None = None) -> Path:
    """The shipped lock format (one key per line, one package per line) with one field replaced."""
    doc = json.loads(make_lock().to_json())
    if package is None:
        doc[key] = value
    else:
        doc["packages"][package][key] = value
    head = json.dumps({k: v for k, v in doc.items() if k != "packages"}, indent=1, sort_keys=True)
    pkgs = ",\n".join("  " + json.dumps(p, sort_keys=True) for p in doc["packages"])
    path = tmp_path / "recipes" / "web.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head[:-2] + ',\n "packages": [\n' + pkgs + "\n ]\n}\n")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


@pytest.mark.parametrize("suite", ["--setup-hook=touch /tmp/pwned", "../../etc/cron.d"])
def test_the_two_example_locks_are_refused_with_file_and_line(tmp_path: Path, suite: str) -> None:
    path = planted(tmp_path, "suite", suite)
    with pytest.raises(LockError) as e:
        read_lock(path)
    line = line_of(path, '"suite"')
    assert f"{path}:{line}: suite:" in e.value.message
    assert e.value.hint is not None and "sandbox lock web" in e.value.hint


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("variant", "--customize-hook=sh"),
        ("variant", "minbase\n"),
        ("architecture", "amd64,--x"),
        ("architecture", "../x"),
        ("recipe", "../../web"),
        ("inputs", "f" * 63 + "\n"),
        ("source_date_epoch", "1700000000"),
        ("source_date_epoch", True),
        ("source_date_epoch", -1),
        ("extra", "x"),
    ],
)
def test_every_lock_field_is_checked(tmp_path: Path, key: str, value: object) -> None:
    path = planted(tmp_path, key, value)
    with pytest.raises(LockError) as e:
        read_lock(path)
    assert f"{path}:{line_of(path, json.dumps(key))}: {key}" in e.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", "--allow-unauthenticated"),
        ("name", "-oDir=/"),
        ("name", "nginx=1.0"),
        ("version", "--help"),
        ("version", "1.0 extra"),
        ("version", "1.0\n"),
        ("sha256", "A" * 64),
        ("sha256", "a" * 64 + "\n"),
        ("size", "12"),
        ("filename", "../../../etc/cron.d/x.deb"),
        ("filename", "sub/x.deb"),
        ("filename", "x.deb\n"),
        ("architecture", "-x"),
    ],
)
def test_every_package_field_is_checked_by_debian_rules(tmp_path: Path, key: str, value: object) -> None:
    path = planted(tmp_path, key, value, package=1)
    with pytest.raises(LockError) as e:
        read_lock(path)
    # the package's own line (one package per line, after the line of "packages": [)
    line = line_of(path, '"packages"') + 2
    assert f"{path}:{line}: packages[1].{key}" in e.value.message


def test_no_lock_or_record_with_a_bad_field_can_be_made_at_all() -> None:
    with pytest.raises(LockError):
        replace(make_lock(), suite="--setup-hook=x")
    with pytest.raises(BuildError):
        PackageRecord("-oDir=/", "1", "amd64", "a" * 64, 1, "x_1_amd64.deb")


# -- the argv builders ------------------------------------------------------------------------------


def forced(lock: Lock, **fields: object) -> Lock:
    """A lock whose fields were changed behind the checks (as a bug or a future caller might)."""
    for k, v in fields.items():
        object.__setattr__(lock, k, v)
    return lock


def test_safe_arg() -> None:
    assert safe_arg("bookworm", "suite") == "bookworm"
    for bad in ("-x", "--setup-hook=x", "", "a\nb", "a\x00b", None):
        with pytest.raises(BuildError):
            safe_arg(bad, "suite")


def test_mmdebstrap_argv_ends_options_before_the_operands(tmp_path: Path) -> None:
    argv = mmdebstrap_argv(make_lock(), tmp_path / "rootfs", "deb [trusted=yes] file:///r bookworm main")
    i = argv.index("--")
    assert argv[i + 1 :] == [
        "bookworm",
        str(tmp_path / "rootfs"),
        "deb [trusted=yes] file:///r bookworm main",
    ]
    assert not any(a.startswith("-") for a in argv[i + 1 :])


@pytest.mark.parametrize(
    "fields",
    [
        {"suite": "--setup-hook=touch /tmp/x"},
        {"variant": "--x"},
        {"architecture": "amd64\n"},
        {"packages": (replace(make_lock().packages[0]),)},  # valid: sanity
    ],
)
def test_mmdebstrap_argv_refuses_options_from_data(tmp_path: Path, fields: dict[str, object]) -> None:
    lock = forced(make_lock(), **fields)
    if "packages" in fields:
        mmdebstrap_argv(lock, tmp_path, "deb x")
        return
    with pytest.raises(BuildError):
        mmdebstrap_argv(lock, tmp_path, "deb x")
    with pytest.raises(BuildError):
        mmdebstrap_argv(make_lock(), tmp_path, "--source-date-epoch=0")


class Recorder(PrivateApt):
    def __init__(self, root: Path) -> None:
        super().__init__(root, "bookworm", "amd64", "")
        self.argvs: list[list[str]] = []

    def _run(self, argv: list[str], cwd: Path | None = None):  # type: ignore[no-untyped-def]
        import subprocess

        self.argvs.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_apt_argv_ends_options_and_refuses_option_like_pins(tmp_path: Path) -> None:
    apt = Recorder(tmp_path)
    apt.simulate(["?essential", "nginx"])
    apt.download([("nginx", "1.22-1")], tmp_path)
    for argv in apt.argvs:
        i = argv.index("--")
        assert not any(a.startswith("-") for a in argv[i + 1 :]), argv
    for call in (
        lambda: apt.simulate(["-oDir::Etc=/tmp/evil"]),
        lambda: apt.download([("-oDir=/", "1")], tmp_path),
        lambda: apt.records([("nginx", "1=2")]),
        lambda: apt.download([("nginx", "")], tmp_path),
    ):
        with pytest.raises(BuildError):
            call()


@pytest.mark.parametrize(
    ("suite", "arch"), [("../../etc/cron.d", "amd64"), ("bookworm", "../x"), ("-x", "amd64")]
)
def test_private_apt_refuses_a_suite_or_architecture_that_could_be_a_path(
    tmp_path: Path, suite: str, arch: str
) -> None:
    with pytest.raises(SandboxError):
        PrivateApt(tmp_path / f"{suite}-{arch}", suite, arch, "")


def test_a_service_name_cannot_be_an_option() -> None:
    from pydantic_core import PydanticCustomError

    from sandbox.config.recipe import _unit

    assert _unit("gunicorn") == "gunicorn.service"
    with pytest.raises(PydanticCustomError):
        _unit("--root=/")
