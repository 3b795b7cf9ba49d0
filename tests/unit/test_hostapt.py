"""build.hostapt: the host's apt sources re-targeted at a recipe's suite, and deb822 parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.build.hostapt import host_codename, host_sources, parse_stanza
from sandbox.errors import BuildError

DEB822 = """\
# the main archive
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# comment: deb http://commented.example/debian bookworm main
deb http://deb.debian.org/debian bookworm main contrib
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg trusted=yes] http://m.example/debian bookworm-updates main
  deb http://deb.debian.org/debian-security bookworm-security main
"""


@pytest.fixture
def apt(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    return tmp_path / "sources.list", d


def sources(apt: tuple[Path, Path], suite: str = "bookworm") -> str:
    return host_sources(suite, sources_list=apt[0], sources_dir=apt[1], codename="bookworm")


def stanzas(text: str) -> list[dict[str, str]]:
    return [parse_stanza(s) for s in text.strip().split("\n\n")]


def test_deb822_file_same_suite(apt: tuple[Path, Path]) -> None:
    (apt[1] / "debian.sources").write_text(DEB822)
    out = sources(apt)
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert "# the main archive" not in out
    got = stanzas(out)
    assert [s["Suites"] for s in got] == ["bookworm bookworm-updates", "bookworm-security"]
    assert got[0]["URIs"] == "http://deb.debian.org/debian"
    assert got[1]["Signed-By"] == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_deb822_retargeted_including_security_and_updates(apt: tuple[Path, Path]) -> None:
    (apt[1] / "debian.sources").write_text(DEB822)
    out = sources(apt, "trixie")
    assert "bookworm" not in out
    got = stanzas(out)
    assert [s["Suites"] for s in got] == ["trixie trixie-updates", "trixie-security"]
    assert got[0]["URIs"] == "http://deb.debian.org/debian"


def test_one_line_list_converted_to_deb822(apt: tuple[Path, Path]) -> None:
    apt[0].write_text(ONE_LINE)
    got = stanzas(sources(apt, "trixie"))
    assert got == [
        {
            "Types": "deb",
            "URIs": "http://deb.debian.org/debian",
            "Suites": "trixie",
            "Components": "main contrib",
        },
        {
            "Types": "deb",
            "URIs": "http://m.example/debian",
            "Suites": "trixie-updates",
            "Components": "main",
            "Signed-By": "/usr/share/keyrings/x.gpg",
            "Trusted": "yes",
        },
        {
            "Types": "deb",
            "URIs": "http://deb.debian.org/debian-security",
            "Suites": "trixie-security",
            "Components": "main",
        },
    ]


def test_one_line_deb_src_and_comments_dropped(apt: tuple[Path, Path]) -> None:
    apt[0].write_text(ONE_LINE)
    out = sources(apt)
    assert "deb-src" not in out
    assert "commented.example" not in out
    assert out.count("Types: deb\n") == 3


def test_list_without_components_gets_main(apt: tuple[Path, Path]) -> None:
    apt[0].write_text("deb http://repo.example/ bookworm\n")
    assert stanzas(sources(apt))[0]["Components"] == "main"


def test_both_files_combined_in_order(apt: tuple[Path, Path]) -> None:
    apt[0].write_text("deb http://first.example/debian bookworm main\n")
    (apt[1] / "b.sources").write_text("Types: deb\nURIs: http://third.example/\nSuites: bookworm\n")
    (apt[1] / "a.list").write_text("deb http://second.example/debian bookworm main\n")
    (apt[1] / "ignored.list.save").write_text("deb http://never.example/ bookworm main\n")
    (apt[1] / "README").write_text("deb http://never.example/ bookworm main\n")
    uris = [s["URIs"] for s in stanzas(sources(apt))]
    assert uris == ["http://first.example/debian", "http://second.example/debian", "http://third.example/"]


def test_codename_only_replaced_as_a_word(apt: tuple[Path, Path]) -> None:
    apt[0].write_text("deb http://bookworms.example/debian bookworm main\n")
    s = stanzas(sources(apt, "trixie"))[0]
    assert s["URIs"] == "http://bookworms.example/debian"
    assert s["Suites"] == "trixie"


def test_no_codename_means_no_retargeting(apt: tuple[Path, Path]) -> None:
    apt[0].write_text("deb http://deb.debian.org/debian bookworm main\n")
    out = host_sources("trixie", sources_list=apt[0], sources_dir=apt[1], codename="")
    assert "Suites: bookworm" in out


def test_no_sources_raise_builderror(apt: tuple[Path, Path]) -> None:
    with pytest.raises(BuildError) as info:
        sources(apt)
    assert info.value.hint and "sources.list" in info.value.hint


def test_only_deb_src_and_comments_raise_builderror(apt: tuple[Path, Path]) -> None:
    apt[0].write_text("# nothing\ndeb-src http://deb.debian.org/debian bookworm main\n")
    (apt[1] / "x.sources").write_text("# Types: deb\n")
    with pytest.raises(BuildError):
        sources(apt)


def test_missing_paths_raise_builderror(tmp_path: Path) -> None:
    with pytest.raises(BuildError):
        host_sources("bookworm", sources_list=tmp_path / "no", sources_dir=tmp_path / "no.d", codename="x")


def test_deb822_deb_src_dropped(apt: tuple[Path, Path]) -> None:
    (apt[1] / "debian.sources").write_text(
        DEB822 + "\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n"
    )
    out = sources(apt)
    assert "deb-src" not in out
    assert "src.example" not in out


def test_retarget_leaves_keyring_paths_alone(apt: tuple[Path, Path]) -> None:
    key = "/usr/share/keyrings/debian-archive-bookworm-automatic.gpg"
    (apt[1] / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
        f"Signed-By: {key}\n"
    )
    s = stanzas(sources(apt, "trixie"))[0]
    assert s["Suites"] == "trixie"
    assert s["Signed-By"] == key


def test_deb822_disabled_stanza_dropped(apt: tuple[Path, Path]) -> None:
    (apt[1] / "debian.sources").write_text(
        DEB822 + "\nTypes: deb\nURIs: http://disabled.example/\nSuites: bookworm\nEnabled: no\n"
    )
    assert "disabled.example" not in sources(apt)


# -- parse_stanza / host_codename -----------------------------------------


def test_parse_stanza_with_continuation_lines() -> None:
    text = (
        "Package: libc6\n"
        "Version: 2.36-9+deb12u4\n"
        "Description: GNU C Library: Shared libraries\n"
        " Contains the standard libraries: used by nearly all programs.\n"
        "\tand a tab-indented line\n"
        "SHA256: " + "ab" * 32 + "\n"
        "Filename: pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb\n"
    )
    f = parse_stanza(text)
    assert f["Package"] == "libc6"
    assert f["Version"] == "2.36-9+deb12u4"
    assert f["Description"] == (
        "GNU C Library: Shared libraries\n"
        " Contains the standard libraries: used by nearly all programs.\n"
        "\tand a tab-indented line"
    )
    assert f["SHA256"] == "ab" * 32
    assert f["Filename"].endswith("libc6_2.36-9+deb12u4_amd64.deb")


def test_parse_stanza_leading_continuation_and_junk_ignored() -> None:
    assert parse_stanza(" orphan continuation\nno colon here\nKey:  value  \n") == {"Key": "value"}


def test_host_codename(tmp_path: Path) -> None:
    p = tmp_path / "os-release"
    p.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME="bookworm"\nID=debian\n')
    assert host_codename(p) == "bookworm"
    p.write_text("ID=debian\nVERSION_CODENAME=trixie\n")
    assert host_codename(p) == "trixie"
    p.write_text("ID=debian\n")
    assert host_codename(p) == ""
    assert host_codename(tmp_path / "missing") == ""


def test_every_apt_run_holds_the_states_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """apt's own locking is off: two builds sharing a package cache (two test processes, two users)
    ran `apt-get update` into one lists/partial at once and both failed. Each run holds the lock."""
    import fcntl
    import subprocess

    from sandbox.build.hostapt import PrivateApt

    apt = PrivateApt(tmp_path / "apt", "bookworm", "amd64", "")
    apt.prepare()
    held: list[bool] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        with open(apt.lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("sandbox.build.hostapt.subprocess.run", fake_run)
    apt.update()
    apt.simulate(["bash"])
    assert held == [True, True]
