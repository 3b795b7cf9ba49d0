"""`sandbox images` and `sandbox image inspect|diff|verify|rm`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from sandbox.cli import complete
from sandbox.cli.main import Ctx, cli, json_option
from sandbox.cli.markup import escape


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@cli.command()
@json_option
@click.pass_obj
def images(obj: Ctx) -> None:
    """List the images in the store."""
    from sandbox.store import ImageStore

    store = ImageStore(obj.ws.images)
    rows = store.summaries()
    from rich.table import Table

    table = Table(box=None)
    for col in ("IMAGE", "REFS", "RECIPE", "PACKAGES", "FILES", "SIZE", "CREATED"):
        table.add_column(col)
    for s in rows:
        table.add_row(
            s.digest[7:19],
            ", ".join(s.refs) or "-",
            s.recipe,
            str(s.packages),
            str(s.files),
            _size(s.size),
            dt.datetime.fromtimestamp(s.created, dt.UTC).strftime("%Y-%m-%d %H:%M"),
        )
    obj.output.result([s.__dict__ for s in rows], None)
    if not obj.output.as_json:
        obj.output.out.print(table if rows else "no images yet: sandbox build RECIPE")
        if packed := store.packed():  # made by the first ship of a blob, removed with the blob
            size = _size(sum(n for _, n in packed))
            obj.output.out.print(f"compressed copies kept for shipping to hosts: {len(packed)}, {size}")


@cli.group()
def image() -> None:
    """Inspect, compare, verify and remove images."""


@image.command()
@click.argument("ref", shell_complete=complete.refs)
@click.option("--files", "show_files", is_flag=True, help="Include the per-file index.")
@json_option
@click.pass_obj
def inspect(obj: Ctx, ref: str, show_files: bool) -> None:
    """Show an image's manifest (REF: recipe, recipe:tag, sha256:… or a digest prefix)."""
    from sandbox.store import ImageStore

    store = ImageStore(obj.ws.images)
    digest = store.resolve(ref)
    m = store.manifest(digest)
    if not show_files:
        m = {**m, "files": len(m["files"])}
    m["digest"] = digest
    text = (
        f"[bold]{digest}[/]\nrecipe    {m['recipe']['name']} ({', '.join(m['recipe']['sources'])})\n"
        f"base      {m['base']['distro']} {m['base']['suite']} {m['base']['variant']} "
        f"{m['base']['architecture']}\npackages  {len(m['packages'])}\n"
        + "".join(
            f"layer     {la['kind']:<5} {la['digest'][:19]} {_size(la['size'])}\n" for la in m["layers"]
        )
        + f"app       {m['app']['command'] if m['app'] else '-'}"
    )
    obj.output.result(m, text)


@image.command()
@click.argument("a", shell_complete=complete.refs)
@click.argument("b", shell_complete=complete.refs)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=None,
    help="List at most N entries of each kind (the web's view uses 2000); `total` counts them all.",
)
@json_option
@click.pass_obj
def diff(obj: Ctx, a: str, b: str, limit: int | None) -> None:
    """What changed from image A to image B: packages, files, and the promotion strategy."""
    from sandbox.promote.diffview import image_diff_view
    from sandbox.store import ImageStore

    store = ImageStore(obj.ws.images)
    da, db = store.resolve(a), store.resolve(b)
    v = image_diff_view(store, da, db, limit=limit)
    lines = [f"{da[:19]} → {db[:19]}"]
    if v["identical"]:
        lines.append("identical")
    pk, fl = v["packages"], v["files"]

    def e(x: object) -> str:  # names come from the image: printed, never read as markup
        return escape(str(x))

    lines += [f"[green]+ package {e(n)} {e(ver)}[/]" for n, ver in pk["added"].items()]
    lines += [f"[red]- package {e(n)} {e(ver)}[/]" for n, ver in pk["removed"].items()]
    lines += [f"[yellow]~ package {e(n)} {e(c['from'])} → {e(c['to'])}[/]" for n, c in pk["changed"].items()]
    lines += [f"[green]+ {e(p)}[/]" for p in fl["added"]]
    lines += [f"[red]- {e(p)}[/]" for p in fl["removed"]]
    lines += [f"[yellow]~ {e(p)}[/]" for p in fl["changed"]]
    shown = sum(map(len, [*pk.values(), *fl.values()]))
    every = sum(n for t in v["total"].values() for n in t.values())
    if every > shown:
        lines.append(f"… and {every - shown} more (--limit)")
    plan = v["plan"]
    lines.append(f"promotion would pick: {plan['strategy']} ({e('; '.join(plan['reasons']))})")
    obj.output.result(v, "\n".join(lines))


@image.command()
@click.argument("ref", shell_complete=complete.refs)
@json_option
@click.pass_obj
def verify(obj: Ctx, ref: str) -> None:
    """Recompute every digest of an image (manifest, layers, per-file sha256)."""
    from sandbox.store import ImageStore
    from sandbox.store.verify import verify_image

    report = verify_image(ImageStore(obj.ws.images), ref)
    text = (
        f"[green]ok[/] {report.digest}: {report.checked_files} files, {_size(report.checked_bytes)} checked"
        if report.ok
        else "\n".join(f"[red]✗[/] {p}" for p in report.problems)
    )
    obj.output.result(report.to_dict(), text)
    if not report.ok:
        raise SystemExit(1)


@image.command("rm")
@click.argument("refs", nargs=-1, required=True, shell_complete=complete.refs)
@json_option
@click.pass_obj
def rm(obj: Ctx, refs: tuple[str, ...]) -> None:
    """Remove images and the layers no other image uses."""
    from sandbox.build.builder import Builder
    from sandbox.store import ImageStore

    store = ImageStore(obj.ws.images)
    # every ref must resolve before anything is removed; two refs to one image remove it once
    digests = list(dict.fromkeys(store.resolve(r) for r in refs))
    out = []
    for d in digests:
        digest, blobs = store.remove(d)
        Builder(obj.ws).forget_layers(blobs)
        out.append({"digest": digest, "removed_layers": blobs})
    obj.output.result(out, "\n".join(f"removed {o['digest']}" for o in out))


@image.command("export")
@click.argument("ref", shell_complete=complete.refs)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tar", "docker", "lxd", "qcow2"]),
    default="tar",
    show_default=True,
    help="tar: flattened rootfs; docker: `docker load` archive; lxd: `lxc image import` tarball; "
    "qcow2: bootable disk.",
)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="File or directory to write to.")
@json_option
@click.pass_obj
def export(obj: Ctx, ref: str, fmt: str, out: Path | None) -> None:
    """Write an image as a file that docker, LXD, qemu or tar use directly."""
    from sandbox.export import export_image

    done = export_image(obj.ws, ref, fmt, out, obj.output)
    obj.output.result(done.__dict__, f"wrote {done.path} ({_size(done.size)}, {fmt} of {done.image[:19]})")
