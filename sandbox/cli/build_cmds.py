"""`sandbox build` and `sandbox lock`."""

from __future__ import annotations

import click

from sandbox.cli import complete
from sandbox.cli.main import Ctx, cli, json_option


@cli.command()
@click.argument("recipe", shell_complete=complete.recipes)
@click.option("--locked", is_flag=True, help="Fail if the recipe no longer matches its lock file.")
@click.option("--tag", metavar="TAG", help="Also point RECIPE:TAG at the built image.")
@click.option(
    "--flavour",
    type=click.Choice(["container", "vm"]),
    default="container",
    show_default=True,
    help="vm: also build the VM flavour (kernel, udev, guest agent; pinned in RECIPE.vm.lock).",
)
@json_option
@click.pass_obj
def build(obj: Ctx, recipe: str, locked: bool, tag: str | None, flavour: str) -> None:
    """Build RECIPE (a name in recipes/ or a path) into an image in images/."""
    from sandbox.build.builder import Builder

    result = Builder(obj.ws, obj.output).build(recipe, locked=locked, tag=tag)
    if flavour == "vm":
        from sandbox.build.vmflavour import VmFlavour

        result.flavours["vm"] = VmFlavour(obj.ws, obj.output).build(result.digest, locked=locked)
    packed = _prepack(obj, recipe, result.digest)
    how = (
        "no-op (cached)"
        if result.cached.get("image")
        else ("base layer cached" if result.cached.get("base") else "built from scratch")
    )
    obj.output.result(
        {**result.to_dict(), "packed_for_hosts": packed},
        f"[bold]{result.ref}[/] {result.digest}\n[dim]{how} in {result.seconds:.2f}s"
        + ("; lock file written" if result.lock_created else "")
        + "".join(f"\n{k} flavour: {v}" for k, v in result.flavours.items())
        + (f"\nlayers compressed for hosts: {len(packed)}" if packed else "")
        + "[/]",
    )


def _prepack(obj: Ctx, recipe: str, digest: str) -> dict[str, str]:
    """The image's layers compressed once now, when a profile ships this recipe to hosts."""
    from sandbox.envs.prepack import prepack, shipped_codec
    from sandbox.settings import load_settings
    from sandbox.store import ImageStore

    name = obj.ws.recipe_path(recipe).stem
    codec = shipped_codec(obj.ws, load_settings(obj.ws), name)
    if codec is None:
        return {}
    return prepack(ImageStore(obj.ws.images), digest, codec, obj.output)


@cli.command()
@click.argument("recipe", shell_complete=complete.recipes)
@json_option
@click.pass_obj
def lock(obj: Ctx, recipe: str) -> None:
    """Resolve RECIPE's packages to exact versions and sha256s; write RECIPE.lock."""
    from sandbox.build.builder import Builder

    lk, path = Builder(obj.ws, obj.output).lock(recipe)
    obj.output.result(
        {
            "lock": str(path),
            "packages": len(lk.packages),
            "source_date_epoch": lk.source_date_epoch,
            "digest": lk.digest,
        },
        f"wrote {path} ({len(lk.packages)} packages, SOURCE_DATE_EPOCH={lk.source_date_epoch})",
    )
