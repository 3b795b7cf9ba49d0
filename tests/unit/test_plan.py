"""promote.plan.make_plan: the gentlest safe strategy for an image diff (pure; ImageDiff built by hand)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.promote.plan import STRATEGIES, Plan, make_plan
from sandbox.store.diff import ImageDiff

APP: dict[str, Any] = {
    "command": "gunicorn app:app",
    "port": 8000,
    "static": ["/srv/app/static/**"],
    "migrations": ["/srv/app/migrations/**"],
    "migrate": "python3 /srv/app/manage.py migrate",
}
CSS = "/srv/app/static/style.css"
CODE = "/srv/app/app.py"
MIGRATION = "/srv/app/migrations/002_tags.sql"


def diff(**kw: Any) -> ImageDiff:
    return ImageDiff(a="sha256:" + "a" * 64, b="sha256:" + "b" * 64, **kw)


def test_identical_images_are_a_noop() -> None:
    p = make_plan(diff(), APP)
    assert p == Plan("noop", ["the running image and the candidate are identical"])
    assert make_plan(diff(), None).strategy == "noop"
    assert make_plan(diff(), APP, compatible=False).strategy == "noop"


@pytest.mark.parametrize(
    "change",
    [
        {"files_changed": [CSS]},
        {"files_added": ["/srv/app/static/img/logo.png", "/srv/app/static/img"]},
        {"files_removed": ["/srv/app/static/old.js"]},
        {
            "files_changed": [CSS],
            "files_added": ["/srv/app/static/new.css"],
            "files_removed": ["/srv/app/static/a"],
        },
    ],
)
def test_only_static_files_sync_without_restart(change: dict[str, list[str]]) -> None:
    p = make_plan(diff(**change), APP)
    every = sorted(f for files in change.values() for f in files)
    assert p.strategy == "static"
    assert sorted(p.static_files) == every
    assert p.code_files == [] and p.migration_files == []
    assert p.reasons == [f"only {len(every)} static file(s) changed"]


def test_static_only_with_an_incompatible_profile_is_still_static() -> None:
    assert make_plan(diff(files_changed=[CSS]), APP, compatible=False).strategy == "static"


def test_code_change_is_a_rolling_swap() -> None:
    p = make_plan(diff(files_changed=["/srv/app/settings.py"]), APP)
    assert p.strategy == "rolling"
    assert p.code_files == ["/srv/app/settings.py"]
    assert p.reasons == ["1 code/config file(s) changed"]


def test_code_and_static_together_roll_and_keep_both_lists() -> None:
    p = make_plan(diff(files_changed=[CODE, CSS], files_added=["/etc/motd"]), APP)
    assert p.strategy == "rolling"
    assert p.static_files == [CSS]
    assert sorted(p.code_files) == ["/etc/motd", CODE]


@pytest.mark.parametrize(
    "path",
    [
        "/srv/app/staticfiles/x.css",  # a sibling whose name starts with "static"
        "/srv/app/static",  # the directory entry itself is not below the glob
        "/srv/app/templates/static/x.html",
    ],
)
def test_paths_outside_the_static_glob_count_as_code(path: str) -> None:
    p = make_plan(diff(files_changed=[path]), APP)
    assert p.strategy == "rolling" and p.code_files == [path] and p.static_files == []


def test_without_an_app_section_every_file_is_code() -> None:
    p = make_plan(diff(files_changed=[CSS]), None)
    assert p.strategy == "rolling" and p.code_files == [CSS] and p.static_files == []
    assert make_plan(diff(files_added=[MIGRATION]), {"port": 8000}).strategy == "rolling"


def test_fnmatch_style_globs_are_honoured() -> None:
    app = {**APP, "static": ["*.css"], "migrations": ["/srv/app/migrations/*.sql"]}
    assert make_plan(diff(files_changed=["/srv/app/static/deep/a.css"]), app).strategy == "static"
    assert make_plan(diff(files_added=[MIGRATION]), app).strategy == "migrate"


def test_migration_files_mean_migrate() -> None:
    p = make_plan(diff(files_added=[MIGRATION]), APP)
    assert p.strategy == "migrate"
    assert p.migration_files == [MIGRATION] and p.code_files == [] and p.static_files == []
    assert p.reasons == ["1 migration file(s) changed"]


def test_migration_with_code_and_static_is_still_migrate() -> None:
    p = make_plan(diff(files_added=[MIGRATION], files_changed=[CODE, CSS]), APP)
    assert p.strategy == "migrate"
    assert (p.migration_files, p.code_files, p.static_files) == ([MIGRATION], [CODE], [CSS])


@pytest.mark.parametrize(
    "change",
    [
        {"packages_changed": {"python3-flask": ("2.2.2-3", "2.2.5-1")}},
        {"packages_added": {"curl": "7.88.1-10"}},
        {"packages_removed": {"cron": "3.0pl1-162"}},
    ],
)
def test_compatible_package_change_is_rolling(change: dict[str, Any]) -> None:
    p = make_plan(diff(**change), APP, compatible=True)
    assert p.strategy == "rolling"
    assert p.reasons == ["1 system package(s) changed"]


@pytest.mark.parametrize(
    "change",
    [
        {"packages_changed": {"python3-flask": ("2.2.2-3", "2.2.5-1")}},
        {"packages_added": {"curl": "7.88.1-10"}, "files_changed": [CODE]},
        {"packages_removed": {"cron": "3.0pl1-162"}, "files_added": [MIGRATION]},
    ],
)
def test_incompatible_package_change_shows_the_maintenance_page(change: dict[str, Any]) -> None:
    p = make_plan(diff(**change), APP, compatible=False)
    assert p.strategy == "maintenance"
    assert p.reasons[-1] == "the profile marks this change as not backward compatible"


def test_users_changed_rolls_or_needs_maintenance() -> None:
    p = make_plan(diff(users_changed=True), APP)
    assert p.strategy == "rolling" and p.reasons == ["users changed"]
    assert make_plan(diff(users_changed=True), APP, compatible=False).strategy == "maintenance"


def test_package_count_in_the_reason_adds_every_kind() -> None:
    d = diff(
        packages_added={"curl": "1"},
        packages_removed={"cron": "2"},
        packages_changed={"sudo": ("1", "2"), "gunicorn": ("20", "21")},
    )
    assert make_plan(d, APP).reasons[0] == "4 system package(s) changed"


def test_compatible_packages_with_migrations_migrate() -> None:
    p = make_plan(diff(packages_added={"curl": "1"}, files_added=[MIGRATION]), APP)
    assert p.strategy == "migrate"
    assert p.reasons == ["1 system package(s) changed", "1 migration file(s) changed"]


def test_app_definition_change_alone_is_rolling() -> None:
    p = make_plan(diff(app_changed=True), APP)
    assert p.strategy == "rolling"
    assert p.reasons == ["the app definition changed"]
    assert (p.code_files, p.static_files, p.migration_files) == ([], [], [])


def test_app_definition_change_with_static_files_is_rolling_not_static() -> None:
    p = make_plan(diff(app_changed=True, files_changed=[CSS]), APP)
    assert p.strategy == "rolling" and p.static_files == [CSS]


def test_every_strategy_is_known_and_the_plan_serialises() -> None:
    plans = [
        make_plan(diff(), APP),
        make_plan(diff(files_changed=[CSS]), APP),
        make_plan(diff(files_changed=[CODE]), APP),
        make_plan(diff(files_added=[MIGRATION]), APP),
        make_plan(diff(users_changed=True), APP, compatible=False),
    ]
    assert [p.strategy for p in plans] == list(STRATEGIES)
    d = plans[3].to_dict()
    assert d == {
        "strategy": "migrate",
        "reasons": ["1 migration file(s) changed"],
        "static_files": [],
        "migration_files": [MIGRATION],
        "code_files": [],
    }


def test_make_plan_does_not_change_its_inputs() -> None:
    d = diff(files_changed=[CSS, CODE])
    app = {**APP, "static": list(APP["static"])}
    make_plan(d, app)
    assert d.files_changed == [CSS, CODE] and app["static"] == ["/srv/app/static/**"]
