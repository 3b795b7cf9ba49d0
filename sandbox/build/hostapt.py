"""The host's apt sources and a private apt instance that reads them.

sandbox never names a mirror: the package sources are the host's own
(/etc/apt/sources.list and sources.list.d), re-targeted at the recipe's suite.
`PrivateApt` runs apt-get/apt-cache against its own state directory, so the
host's package database is never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.build.argv import safe_arg, safe_args
from sandbox.errors import BuildError, ToolMissing
from sandbox.fsutil import file_lock

SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SUITE_RE = re.compile(r"[a-z]+")  # as the recipe's base.suite
ARCH_RE = re.compile(r"[a-z0-9]+")  # as the recipe's base.architecture


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def host_sources(
    suite: str,
    *,
    sources_list: Path = SOURCES_LIST,
    sources_dir: Path = SOURCES_DIR,
    codename: str | None = None,
) -> str:
    """The host's apt sources as text, with the host's codename replaced by `suite`.

    Both one-line (.list) and deb822 (.sources) files are read; deb-src entries
    are dropped. Raises BuildError if the host has no usable source.
    """
    host = host_codename() if codename is None else codename
    chunks: list[tuple[str, str]] = []
    files: list[Path] = []
    if sources_list.is_file():
        files.append(sources_list)
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            stanzas = [_binary_only(_strip_comments(s)) for s in re.split(r"\n\s*\n", text)]
            text = "\n\n".join(_retarget_field(s, host, suite) for s in stanzas if s)
            if text.strip():
                chunks.append(("deb822", text))
        else:
            lines = [ln for ln in text.splitlines() if ln.strip().startswith("deb ")]
            if lines:
                chunks.append(("list", "\n".join(_retarget(ln, host, suite) for ln in lines)))
    if not chunks:
        raise BuildError(
            "the host has no apt sources to build from",
            hint="add a 'deb' entry to /etc/apt/sources.list or sources.list.d/",
        )
    # apt accepts one format per file; convert one-line entries to deb822 stanzas
    out: list[str] = []
    for kind, text in chunks:
        out.append(text if kind == "deb822" else _list_to_deb822(text))
    return "\n\n".join(s.strip() for s in out) + "\n"


def _strip_comments(stanza: str) -> str:
    return "\n".join(ln for ln in stanza.splitlines() if not ln.lstrip().startswith("#"))


def _binary_only(stanza: str) -> str:
    """The stanza with `Types: deb` only, or "" if it has no binary type or is disabled."""
    fields = parse_stanza(stanza)
    if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes").strip().lower() == "no":
        return ""
    return re.sub(r"^Types:.*$", "Types: deb", stanza, count=1, flags=re.M)


def _swap_suite(suite_value: str, host: str, suite: str) -> str:
    if suite_value == host or suite_value.startswith(host + "-"):
        return suite + suite_value[len(host) :]
    return suite_value


def _retarget_field(stanza: str, host: str, suite: str) -> str:
    """Replace the host's codename in the Suites: field only (keyring paths stay as they are)."""
    if not host or host == suite:
        return stanza

    def fix(m: re.Match[str]) -> str:
        return m.group(1) + " ".join(_swap_suite(s, host, suite) for s in m.group(2).split())

    return re.sub(r"^(Suites:\s*)(.*)$", fix, stanza, flags=re.M)


def _retarget(line: str, host: str, suite: str) -> str:
    """Replace the host's codename in the suite column of a one-line entry."""
    if not host or host == suite:
        return line
    m = re.match(r"(\s*deb\s+(?:\[[^\]]*\]\s+)?\S+\s+)(\S+)(.*)$", line)
    if not m:
        return line
    return m.group(1) + _swap_suite(m.group(2), host, suite) + m.group(3)


def _list_to_deb822(text: str) -> str:
    stanzas = []
    for line in text.splitlines():
        opts = ""
        m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line.strip())
        if not m:
            continue
        if m.group(1):
            opts = m.group(1).strip()[1:-1]
        stanza = f"Types: deb\nURIs: {m.group(2)}\nSuites: {m.group(3)}\nComponents: {m.group(4) or 'main'}"
        for opt in opts.split():
            key, _, value = opt.partition("=")
            if key == "signed-by":
                stanza += f"\nSigned-By: {value}"
            elif key == "trusted":
                stanza += f"\nTrusted: {value}"
        stanzas.append(stanza)
    return "\n\n".join(stanzas)


PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]{0,126}")  # [epoch:]upstream[-revision], 5.6.12
FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_%-]{0,250}\.deb")  # a pool file name, no directory
SHA256_RE = re.compile(r"[0-9a-f]{64}")
RECORD_KEYS = frozenset(("name", "version", "architecture", "sha256", "size", "filename"))
Loc = tuple[str | int, ...]


def is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def match(rx: re.Pattern[str], v: Any) -> bool:
    return isinstance(v, str) and rx.fullmatch(v) is not None


def record_problems(p: Any, at: Loc = ()) -> list[tuple[Loc, str]]:
    """What is wrong with one package entry of a lock (empty: nothing)."""
    if not isinstance(p, dict):
        return [(at, "a package entry must be a mapping")]
    out: list[tuple[Loc, str]] = []
    for key in sorted(RECORD_KEYS - p.keys()):
        out.append((at, f"missing key {key!r}"))
    for key in sorted(p.keys() - RECORD_KEYS, key=str):
        out.append(((*at, key), f"unknown key {key!r}"))
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
        ("name", lambda v: match(PACKAGE_RE, v), "a Debian package name"),
        ("version", lambda v: match(VERSION_RE, v), "a Debian version"),
        ("architecture", lambda v: match(ARCH_RE, v), "an architecture"),
        ("sha256", lambda v: match(SHA256_RE, v), "64 lowercase hex digits"),
        ("size", lambda v: is_int(v, 0, 1 << 40), "a size in bytes"),
        ("filename", lambda v: match(FILENAME_RE, v), "a .deb file name without directories"),
    )
    for key, ok, what in checks:
        if key in p and not ok(p[key]):
            out.append(((*at, key), f"{str(p[key])[:80]!r} is not {what}"))
    return out


@dataclass(frozen=True)
class PackageRecord:
    """One resolved package: exact version and the .deb's sha256."""

    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    filename: str  # the pool file name, e.g. libc6_2.36-9_amd64.deb (no directories)

    def __post_init__(self) -> None:
        # a record names files (the pool, the cache) and apt pins: from a lock, a VM lock or a
        # mirror's index, every field is checked wherever it is made
        problems = record_problems(asdict(self))
        if problems:
            loc, problem = problems[0]
            raise BuildError(
                f"package {str(self.name)[:60]!r}: {'.'.join(map(str, loc)) or 'entry'}: {problem}",
                hint="re-lock the recipe (sandbox lock), or check the host's apt sources",
            )


class PrivateApt:
    """apt-get / apt-cache with their own state in `root`, reading the host's sources."""

    def __init__(self, root: Path, suite: str, architecture: str, sources: str) -> None:
        # both go into a path (the caller's `root`), apt.conf and the sources: checked here too
        if not SUITE_RE.fullmatch(suite) or not ARCH_RE.fullmatch(architecture):
            raise BuildError(
                f"{suite[:40]!r} / {architecture[:40]!r} is not a Debian suite / architecture",
                hint="e.g. bookworm / amd64; check the recipe, its lock file or the image's manifest",
            )
        self.root = root
        self.suite = suite
        self.architecture = architecture
        self.sources = sources
        self.config = root / "apt.conf"

    @property
    def lock(self) -> Path:
        """Held around every write of the state and every apt run: apt's own locking is off
        (Debug::NoLocking), and two builds that share a package cache share this state."""
        return self.root / "sandbox.lock"

    def prepare(self) -> None:
        with file_lock(self.lock):
            self._prepare()

    def _prepare(self) -> None:
        r = self.root
        for d in (
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/lib/dpkg",
            "var/cache/apt/archives/partial",
        ):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "var/lib/dpkg/status").touch()
        (r / "etc/apt/sources.list.d/host.sources").write_text(self.sources)
        self.config.write_text(
            f'Dir "{r}/";\n'
            f'Dir::State::status "{r}/var/lib/dpkg/status";\n'
            'Dir::Etc::TrustedParts "/etc/apt/trusted.gpg.d/";\n'
            'Dir::Etc::Trusted "/etc/apt/trusted.gpg";\n'
            'Dir::Bin::dpkg "/usr/bin/dpkg";\n'
            f'APT::Architecture "{self.architecture}";\n'
            f'APT::Architectures "{self.architecture}";\n'
            'APT::Install-Recommends "false";\n'
            'APT::Sandbox::User "root";\n'
            'Acquire::Languages "none";\n'
            'Debug::NoLocking "true";\n'
        )

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "APT_CONFIG": str(self.config),
            "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        try:
            with file_lock(self.lock):
                return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise ToolMissing(f"{argv[0]} is not installed", hint="apt-get install apt") from e

    def update(self) -> None:
        self.prepare()
        p = self._run(["apt-get", "-q", "update"])
        if p.returncode != 0 or "\nE: " in "\n" + p.stderr:
            raise BuildError(
                "apt-get update failed for the host's sources:\n" + _tail(p.stderr),
                hint="check the network and /etc/apt/sources.list*; a locked build with a "
                "full package cache needs no network",
            )

    def simulate(self, selection: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Resolve `selection` (names or apt patterns) from an empty system.

        Returns ([(name, version, arch)], [names apt could not locate]).
        """
        p = self._run(["apt-get", "-s", "-q", "install", "--", *safe_args(selection, "package")])
        missing = re.findall(r"^E: Unable to locate package (\S+)", p.stderr, re.M)
        missing += re.findall(r"^E: Package '([^']+)' has no installation candidate", p.stderr, re.M)
        if missing:
            return [], missing
        if p.returncode != 0:
            raise BuildError("apt could not resolve the package set:\n" + _tail(p.stderr + p.stdout))
        out = []
        for m in re.finditer(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", p.stdout, re.M):
            out.append((m.group(1), m.group(2), m.group(3)))
        return out, []

    def records(self, pins: list[tuple[str, str]]) -> list[PackageRecord]:
        """sha256/size/filename for exact name=version pins, from the indices."""
        p = self._run(["apt-cache", "show", "--no-all-versions", "--", *(_pin(n, v) for n, v in pins)])
        if p.returncode != 0:
            raise BuildError("apt-cache show failed:\n" + _tail(p.stderr))
        recs = []
        for stanza in re.split(r"\n\s*\n", p.stdout.strip()):
            f = parse_stanza(stanza)
            recs.append(
                PackageRecord(
                    name=f["Package"],
                    version=f["Version"],
                    architecture=f["Architecture"],
                    sha256=f["SHA256"],
                    size=int(f["Size"]),
                    filename=f["Filename"].rsplit("/", 1)[-1],
                )
            )
        return recs

    def download(self, pins: list[tuple[str, str]], dest: Path) -> None:
        """Download exact versions into `dest` (apt checks the index hashes)."""
        if not pins:
            return
        p = self._run(["apt-get", "-q", "download", "--", *(_pin(n, v) for n, v in pins)], cwd=dest)
        if p.returncode != 0:
            raise BuildError(
                "downloading packages failed:\n" + _tail(p.stderr),
                hint="a locked version may have left the mirror; run `sandbox lock` to re-resolve",
            )


def _pin(name: str, version: str) -> str:
    """NAME=VERSION for apt; neither part may look like an option or carry a second pin."""
    if "=" in name or "=" in version or not version:
        raise BuildError(f"package pin {name!r}={version!r} is malformed", hint="re-lock: sandbox lock")
    return safe_arg(f"{name}={version}", "package pin")


def parse_stanza(stanza: str) -> dict[str, str]:
    """Parse one deb822 stanza (continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
