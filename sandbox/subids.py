"""sandbox's subordinate id range: the host ids its containers' and build commands' ids become.

One range of 65536 uids and gids for root that no other entry of /etc/subuid or /etc/subgid
overlaps (a user whose range overlaps could enter it and own every container's files), chosen
once per runtime dir and recorded there, checked at every start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.fsutil import atomic_write

SUBID_START = 100000
SUBID_COUNT = 65536
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
RECORD = "subids"  # in the runtime dir: the ranges its envs use, so they never move under them


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class SubIdEntry:
    """One line of /etc/subuid or /etc/subgid."""

    owner: str
    range: IdRange
    line: int

    def __str__(self) -> str:
        return f"{self.owner}:{self.range.start}:{self.range.count} (line {self.line})"


class SubIdOverlap(SandboxError):
    """sandbox's id range is shared with another user of the host."""


def read_subids(path: Path) -> list[SubIdEntry]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        f = line.strip().split(":")
        if len(f) == 3 and f[1].isdigit() and f[2].isdigit():
            out.append(SubIdEntry(f[0], IdRange(int(f[1]), int(f[2])), n))
    return out


def subid_range(user: str = "root", path: Path = Path("/etc/subuid")) -> IdRange | None:
    """The first range of `user` in `path` big enough for a container (what sandbox used to take)."""
    for e in read_subids(path):
        if e.owner == user and e.range.count >= SUBID_COUNT:
            return IdRange(e.range.start, SUBID_COUNT)
    return None


def others_overlapping(entries: list[SubIdEntry], rng: IdRange, user: str) -> list[SubIdEntry]:
    return [e for e in entries if e.owner != user and e.range.overlaps(rng)]


def choose_range(entries: list[SubIdEntry], user: str = "root") -> IdRange:
    """A range of SUBID_COUNT ids for `user` that no other entry overlaps (pure).

    `user`'s own ranges come first (so an existing, private `root:100000:65536` is kept); else the
    first free block at SUBID_START + k * SUBID_COUNT. A range given to a login user by useradd (say
    `alice:100000:65536`) is never taken: that user could enter it and own every container's files.
    """
    for e in entries:
        if e.owner == user and e.range.count >= SUBID_COUNT:
            rng = IdRange(e.range.start, SUBID_COUNT)
            if not others_overlapping(entries, rng, user):
                return rng
    start = SUBID_START
    while start + SUBID_COUNT <= 2**32 - 1:
        rng = IdRange(start, SUBID_COUNT)
        clash = others_overlapping(entries, rng, user)
        if not clash:
            return rng
        start += SUBID_COUNT * (1 + (max(e.range.end for e in clash) - 1 - start) // SUBID_COUNT)
    raise SandboxError(
        "no free range of 65536 subordinate ids is left", hint="tidy /etc/subuid and /etc/subgid"
    )


def _overlap_error(
    path: Path, rng: IdRange, user: str, clash: list[SubIdEntry], record: Path
) -> SubIdOverlap:
    return SubIdOverlap(
        f"sandbox's ids {rng.start}-{rng.end - 1} in {path} ({user}:{rng.start}:{rng.count}) overlap "
        + ", ".join(str(e) for e in clash)
        + ": that user could enter the range and own every container's files",
        hint=f"remove or move the entry of {clash[0].owner} in {path} (usermod --del-subuids/--del-subgids), "
        f"or, once no env of this workspace runs, delete {record} so that sandbox picks a free range",
    )


def _append(path: Path, user: str, rng: IdRange) -> None:
    try:
        existing = path.read_text() if path.exists() else ""
        sep = "" if not existing or existing.endswith("\n") else "\n"
        path.write_text(f"{existing}{sep}{user}:{rng.start}:{rng.count}\n")
    except OSError as e:
        raise SandboxError(
            f"{path} has no range for {user} and cannot be written ({e.strerror})",
            hint=f"add the line '{user}:{rng.start}:{rng.count}' to {path}",
        ) from e


def _read_record(record: Path) -> tuple[IdRange, IdRange] | None:
    try:
        fields = dict(line.split(None, 1) for line in record.read_text().splitlines() if line.strip())
        u, g = (fields[k].split() for k in ("uid", "gid"))
        return IdRange(int(u[0]), int(u[1])), IdRange(int(g[0]), int(g[1]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, IndexError) as e:
        raise SandboxError(f"{record} is malformed ({e})", hint=f"delete {record} when no env runs") from e


def ensure_subids(
    record: Path,
    user: str = "root",
    files: tuple[Path, Path] = SUBID_FILES,
    *,
    legacy: bool = False,
) -> tuple[IdRange, IdRange]:
    """The (uid, gid) ranges sandbox's containers and build commands use; checked at every start.

    The choice is recorded in `record` (the runtime dir's `subids`) on first use, so it never moves
    under running envs. A recorded range that another entry of /etc/subuid or /etc/subgid overlaps
    is refused (SubIdOverlap), as is, with `legacy` (envs made before ranges were recorded), the
    range those envs used (`user`'s first range) when it is shared.
    """
    recorded = _read_record(record)
    entries = [read_subids(p) for p in files]
    if recorded is None:
        if legacy:
            # envs made before the record: they run in the first range of `user`, whatever it is
            chosen = []
            for path, ents in zip(files, entries, strict=True):
                rng = subid_range(user, path) or choose_range(ents, user)
                chosen.append(rng)
        else:
            chosen = [choose_range(ents, user) for ents in entries]
        recorded = (chosen[0], chosen[1])
    for path, ents, rng in zip(files, entries, recorded, strict=True):
        clash = others_overlapping(ents, rng, user)
        if clash:
            raise _overlap_error(path, rng, user, clash, record)
        if not any(e.owner == user and e.range.start <= rng.start and rng.end <= e.range.end for e in ents):
            _append(path, user, rng)  # newuidmap and lxc-usernsexec look here
    if not record.is_file():
        record.parent.mkdir(parents=True, exist_ok=True)
        u, g = recorded
        atomic_write(record, f"uid {u.start} {u.count}\ngid {g.start} {g.count}\n".encode())
    return recorded


def runtime_ids(runtime: Path, files: tuple[Path, Path] = SUBID_FILES) -> tuple[IdRange, IdRange]:
    """The id ranges of the envs (and build commands) of one runtime dir (see `ensure_subids`)."""
    legacy = any((runtime / "lxc").glob("*/config"))  # lxc instances made before ranges were recorded
    return ensure_subids(runtime / RECORD, files=files, legacy=legacy)
