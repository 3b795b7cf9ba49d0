"""The card's commands as written: `sandbox promote --to prod` alone promotes the image most recently
verified on another env of prod's recipe (and says which); `rollback` asks like `promote` and takes
`--yes`; off a terminal, both refuse without `--yes` and change nothing. On the fake backend of
tests/fakes.py, through the real click commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import sandbox.cli.promote_cmds
from sandbox.cli.main import cli
from sandbox.promote.rolling import GateError, Promoter
from tests.unit.test_envs_orchestration import World, _fresh_fake  # noqa: F401 (an autouse fixture)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    monkeypatch.setattr(sandbox.cli.promote_cmds, "Envs", lambda ws, sink: w.envs())
    return w


def run(world: World, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-C", str(world.ws.root), *args], catch_exceptions=False)


def up(world: World, *envs: tuple[str, str]) -> None:
    for name, image in envs:
        world.envs().up(name, image=image)


def verified(world: World, image: str, env: str, ok: bool = True) -> None:
    Promoter(world.envs()).deploys.record_verification(image, env, ok, "a test says so")


def test_promote_to_alone_takes_the_newest_verified_image_of_the_recipe(world: World) -> None:
    up(world, ("prod", world.a), ("staging-1", world.a), ("staging-2", world.b))
    r = run(world, "promote", "--to", "prod", "--yes")
    assert r.exit_code == 1 and "no image of recipe" in r.output and "sandbox verify staging-1" in r.output
    assert world.envs().state.get_env("prod").image == world.a

    verified(world, world.b, "staging-2")
    verified(world, world.a, "prod")  # prod's own result never counts
    r = run(world, "promote", "--to", "prod", "--yes")
    assert r.exit_code == 0, r.output
    assert f"picked {world.b[:19]}: verified on staging-2" in r.output
    assert world.envs().state.get_env("prod").image == world.b
    assert Promoter(world.envs()).history("prod")[0].source == "staging-2"


def test_the_newest_passing_result_wins_and_a_later_failure_withdraws_it(world: World) -> None:
    up(world, ("prod", world.a))
    p = Promoter(world.envs())
    verified(world, world.a, "staging-1")
    verified(world, world.b, "staging-2")
    assert p.latest_verified("prod").image == world.b
    verified(world, world.b, "staging-2", ok=False)  # its latest result there failed
    v = p.latest_verified("prod")
    assert (v.image, v.env) == (world.a, "staging-1")
    verified(world, world.a, "staging-1", ok=False)
    with pytest.raises(GateError, match="has passed `sandbox verify`"):
        p.latest_verified("prod")


def test_promote_plan_json_names_what_it_picked(world: World) -> None:
    up(world, ("prod", world.a))
    verified(world, world.b, "staging-9")
    r = run(world, "promote", "--to", "prod", "--plan", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["picked"]["image"] == world.b and doc["picked"]["env"] == "staging-9"
    assert world.envs().state.get_env("prod").image == world.a


def test_off_a_terminal_promote_and_rollback_refuse_without_yes(world: World) -> None:
    up(world, ("prod", world.a), ("staging-2", world.b))
    verified(world, world.b, "staging-2")
    r = run(world, "promote", "--to", "prod")
    assert r.exit_code == 1 and "needs confirmation" in r.output and "--yes" in r.output
    assert world.envs().state.get_env("prod").image == world.a
    assert run(world, "promote", "--from", "staging-2", "--to", "prod", "--yes").exit_code == 0

    r = run(world, "rollback", "--to", "prod")
    assert r.exit_code == 1 and f"roll prod back to {world.a[:19]}: needs confirmation" in r.output
    assert world.envs().state.get_env("prod").image == world.b
    r = run(world, "rollback", "--to", "prod", "--yes")
    assert r.exit_code == 0, r.output
    assert world.envs().state.get_env("prod").image == world.a


def test_rollback_with_nothing_before_says_so_before_asking(world: World) -> None:
    up(world, ("prod", world.a))
    r = run(world, "rollback", "--to", "prod")
    assert r.exit_code == 1 and "no earlier image to roll back to" in r.output


def test_ref_and_from_together_are_one_clear_error(world: World) -> None:
    up(world, ("prod", world.a), ("staging-2", world.b))
    r = run(world, "promote", world.b, "--from", "staging-2", "--to", "prod", "--yes")
    assert r.exit_code == 1 and "not both" in r.output
    assert world.envs().state.get_env("prod").image == world.a
