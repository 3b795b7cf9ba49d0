"""Layer file indexes: recomputed from a layer's tar, and stacked (whiteouts, opaque dirs)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import IO, Any

Index = dict[str, dict[str, Any]]


def index_of_tar(f: IO[bytes]) -> Index:
    """Recompute a layer's file index from its tar (used by `image verify`)."""
    index: Index = {}
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for ti in tar:
            rel = "" if ti.name in (".", "./") else ti.name.removeprefix("./").rstrip("/")
            parent, _, base = rel.rpartition("/")
            key = "/" + rel
            if base == ".wh..wh..opq":
                index["/" + parent if parent else "/"]["opaque"] = True
                continue
            if base.startswith(".wh."):
                index["/" + (parent + "/" if parent else "") + base[4:]] = {"type": "whiteout"}
                continue
            entry: dict[str, Any] = {"mode": f"{ti.mode:04o}", "uid": ti.uid, "gid": ti.gid}
            if ti.isdir():
                entry["type"] = "dir"
            elif ti.islnk():
                first = "/" + ti.linkname.removeprefix("./")
                entry.update({k: index[first][k] for k in ("type", "size", "sha256")})
                entry["hardlink"] = first
            elif ti.isreg():
                h = hashlib.sha256()
                src = tar.extractfile(ti)
                assert src is not None
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                entry.update({"type": "file", "size": ti.size, "sha256": h.hexdigest()})
            elif ti.issym():
                entry.update({"type": "symlink", "target": ti.linkname})
            elif ti.ischr() or ti.isblk():
                entry.update({"type": "char" if ti.ischr() else "block", "dev": [ti.devmajor, ti.devminor]})
            elif ti.isfifo():
                entry["type"] = "fifo"
            index[key] = entry
    return index


def merge_indexes(layers: list[Index]) -> Index:
    """The file index of the stacked layers (whiteouts and opaque dirs applied)."""
    merged: Index = {}
    for layer in layers:
        for key in sorted(layer):
            entry = layer[key]
            if entry.get("type") == "whiteout" or entry.get("opaque"):
                prefix = key.rstrip("/") + "/"
                for k in [k for k in merged if k.startswith(prefix)]:
                    del merged[k]
                if entry.get("type") == "whiteout":
                    merged.pop(key, None)
                    continue
            merged[key] = {k: v for k, v in entry.items() if k != "opaque"}
    return merged


def read_files(blobs: list[Path], paths: list[str]) -> dict[str, bytes]:
    """The contents of regular files `paths` (absolute in the image) from an image's layer tars."""
    wanted = {"." + p for p in paths}
    out: dict[str, bytes] = {}
    for blob in blobs:  # later layers win
        with tarfile.open(blob) as tar:
            for ti in tar:
                if ti.name in wanted and ti.isreg():
                    f = tar.extractfile(ti)
                    assert f is not None
                    out[ti.name[1:]] = f.read()
    return out
