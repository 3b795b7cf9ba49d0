"""Profiles: units, the shipped profiles, extends/merge rules, every bad input located, env names."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from sandbox.config import (
    Duration,
    Health,
    LoadedProfile,
    Mount,
    PortMap,
    Profile,
    Resources,
    Router,
    Size,
    env_profile_name,
    load_profile,
    load_profile_by_name,
    parse_duration,
    parse_size,
)
from sandbox.errors import ConfigError, ConfigIssue, NotFound

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"


def write(root: Path, name: str, text: str) -> Path:
    path = root / "profiles" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(root: Path, name: str, text: str | None = None) -> LoadedProfile:
    if text is not None:
        write(root, name, text)
    return load_profile(root / "profiles" / f"{name}.yaml", display_root=root)


def issues(root: Path, name: str, text: str | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(root, name, text)
    return info.value.issues


def only(found: list[ConfigIssue], path: str) -> ConfigIssue:
    matching = [i for i in found if i.path == path]
    assert len(matching) == 1, [str(i) for i in found]
    return matching[0]


def at(issue: ConfigIssue) -> str:
    """'profiles/x.yaml:3' for an issue."""
    return f"{issue.location.file}:{issue.location.line}"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace with the shipped profiles."""
    shutil.copytree(SHIPPED, tmp_path / "profiles")
    return tmp_path


# --- units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("4h", 14400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1d12h", 129600),
        ("2w", 1209600),
        ("0.5s", 0.5),
        ("250ms", 0.25),
        ("1m30s", 90),
        ("120", 120),
        (" 5m ", 300),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "h", "-5s", "1h30", "30m1h", "1h1h", "1 h", "1H", "1e3s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_messages() -> None:
    with pytest.raises(ValueError, match=r"invalid duration 'soon'.*e\.g\. 90s, 30m, 4h, 7d, 1h30m"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="largest first"):
        parse_duration("30m1h")
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999w")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 << 20),
        ("1G", 1 << 30),
        ("256MiB", 256 << 20),
        ("1073741824", 1 << 30),
        ("64k", 64 << 10),
        ("1.5G", 3 << 29),
        ("2T", 2 << 40),
        ("1MB", 1_000_000),
        ("10B", 10),
        ("512 M", 512 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1X", "M", "1.5", "0.1K", "1GiB2", "1 G B", "1Mb"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_parse_size_messages() -> None:
    with pytest.raises(ValueError, match=r"invalid size 'lots'.*e\.g\. 512M, 1G, 256MiB"):
        parse_size("lots")
    with pytest.raises(ValueError, match="unknown unit 'X'"):
        parse_size("1X")
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size("1.5")


class _Units(BaseModel):
    d: Duration
    s: Size


def test_pydantic_types() -> None:
    assert _Units.model_validate({"d": "1h30m", "s": "1G"}).model_dump() == {"d": 5400.0, "s": 1 << 30}
    m = _Units.model_validate({"d": 90, "s": 4096})
    assert (m.d, m.s) == (90.0, 4096) and isinstance(m.d, float)
    for bad in (
        {"d": "soon", "s": 1},
        {"d": True, "s": 1},
        {"d": -1, "s": 1},
        {"d": 1, "s": 1.5},
        {"d": 1, "s": "lots"},
    ):
        with pytest.raises(ValidationError):
            _Units.model_validate(bad)


# --- the shipped profiles -------------------------------------------------------------------------


def test_shipped_prod() -> None:
    loaded = load_profile_by_name(SHIPPED, "prod")
    p = loaded.profile
    assert (p.name, p.recipe, p.image, p.backend, p.instances) == ("prod", "web", None, "lxc", 2)
    assert (p.resources.cpus, p.resources.memory) == (1.0, 512 << 20)
    assert p.env == {"APP_ENV": "production"}
    assert (p.health.path, p.health.interval, p.health.timeout) == ("/healthz", 0.5, 120.0)
    assert p.router is not None
    assert (p.router.listen, p.router.port, p.router.server_name, p.router.drain_timeout) == (
        "127.0.0.1",
        8080,
        "_",
        30.0,
    )
    assert p.ttl is None and p.max_per_owner is None
    assert loaded.sources == [SHIPPED / "prod.yaml"]


def test_shipped_staging_extends_prod() -> None:
    loaded = load_profile_by_name(SHIPPED, "staging", display_root=SHIPPED.parent)
    p = loaded.profile
    assert (p.name, p.extends, p.recipe, p.instances) == ("staging", "prod", "web", 1)
    assert p.resources.cpus == 1 and p.resources.memory == 512 << 20
    assert p.router is not None and p.router.port == "auto" and p.router.listen == "127.0.0.1"
    assert p.router.drain_timeout == 30
    assert p.ttl == 604800
    assert p.env == {"APP_ENV": "staging"}
    assert p.health.path == "/healthz"
    assert loaded.sources == [SHIPPED / "prod.yaml", SHIPPED / "staging.yaml"]
    # inherited values point at the file that defines them
    assert loaded.where(("resources", "cpus")).file == "profiles/prod.yaml"
    assert loaded.where(("router", "port")).file == "profiles/staging.yaml"
    assert loaded.where(("router", "listen")).file == "profiles/prod.yaml"


def test_shipped_dev_extends_staging() -> None:
    p = load_profile_by_name(SHIPPED, "dev").profile
    assert (p.instances, p.ttl, p.max_per_owner) == (1, 14400, 3)
    assert (p.resources.cpus, p.resources.memory) == (1.0, 256 << 20)
    assert p.router is not None and p.router.port == "auto"
    assert p.env == {"APP_ENV": "staging"}


def test_shipped_staging_comment() -> None:
    assert "as close to production as possible, without fanaticism" in (SHIPPED / "staging.yaml").read_text()


def test_digest_is_canonical(ws: Path) -> None:
    a = load(ws, "staging")
    assert a.digest() == load(ws, "staging").digest() and len(a.digest()) == 64
    assert a.digest() != load(ws, "prod").digest()
    # the same values written differently give the same digest
    text = (ws / "profiles" / "staging.yaml").read_text()
    write(ws, "staging", text.replace("ttl: 7d", "ttl: 168h").replace("instances: 1", "instances: 0x1"))
    assert load(ws, "staging").digest() == a.digest()


def test_load_by_name_not_found(ws: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_profile_by_name(ws / "profiles", "qa", display_root=ws)
    assert "profile 'qa' not found in profiles" in info.value.message
    assert info.value.hint == "profiles there: dev, prod, staging"
    with pytest.raises(NotFound, match="not a valid profile name"):
        load_profile_by_name(ws / "profiles", "../profiles/prod")
    with pytest.raises(NotFound) as info:
        load_profile_by_name(ws / "nowhere", "prod")
    assert info.value.hint is not None and "NAME.yaml" in info.value.hint


# --- merge rules -----------------------------------------------------------------------------------

PARENT = """\
    name: base
    image: web:v1
    instances: 3
    resources: {cpus: 2, pids: 100}
    ports:
      - {host: 8080, container: 80}
      - {host: 8443, container: 443}
    env: {A: "1", B: "2"}
    mounts:
      - {src: data, dest: /data}
      - {src: logs, dest: /logs, readonly: true}
    health: {command: /bin/true, timeout: 60s}
"""


def test_merge_rules(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "other").mkdir()
    write(tmp_path, "base", PARENT)
    loaded = load(
        tmp_path,
        "child",
        """\
        name: child
        extends: base
        recipe: web
        resources: {memory: 1G}
        ports:
          - {host: 9000, container: 80, proto: udp}
        env: {B: 3, C: true}
        mounts:
          - {src: other, dest: /logs}
          - {src: /tmp, dest: /scratch}
        health: {path: /up}
        """,
    )
    p = loaded.profile
    assert (p.recipe, p.image) == ("web", None)  # the child's recipe clears the parent's image
    assert p.instances == 3
    assert (p.resources.cpus, p.resources.memory, p.resources.pids) == (2.0, 1 << 30, 100)
    assert [(m.host, m.proto) for m in p.ports] == [(9000, "udp")]  # lists are replaced
    assert p.env == {"A": "1", "B": "3", "C": "true"}
    assert [(m.src, m.dest, m.readonly) for m in p.mounts] == [
        ("data", "/data", False),
        ("other", "/logs", False),  # same dest: the child's replaces the parent's, in place
        ("/tmp", "/scratch", False),
    ]
    assert (p.health.path, p.health.command, p.health.timeout, p.health.interval) == (
        "/up",
        "/bin/true",
        60,
        0.5,
    )
    assert loaded.where(("mounts", 1, "src")).file == "profiles/child.yaml"
    assert loaded.where(("mounts", 0, "src")).file == "profiles/base.yaml"


def test_child_image_clears_parent_recipe_and_null_router(ws: Path) -> None:
    p = load(ws, "pinned", "name: pinned\nextends: staging\nimage: sha256:0123abcd\nrouter: null\n").profile
    assert (p.recipe, p.image, p.router) == (None, "sha256:0123abcd", None)
    assert p.ttl == 604800


def test_name_is_not_inherited(ws: Path) -> None:
    found = issues(ws, "noname", "extends: prod\n")
    assert [(at(i), i.path, i.message) for i in found] == [
        ("profiles/noname.yaml:1", "name", "missing required key 'name'")
    ]


# --- bad input, each located -------------------------------------------------------------------------


def test_yaml_syntax_error(ws: Path) -> None:
    found = issues(ws, "broken", "name: broken\nrecipe: [web\n")
    assert len(found) == 1 and at(found[0]).startswith("profiles/broken.yaml:")
    assert "YAML syntax error" in found[0].message


def test_unknown_keys_with_did_you_mean(ws: Path) -> None:
    found = issues(
        ws,
        "typo",
        """\
        name: typo
        extends: staging
        instance: 2
        router:
          prot: 80
        health: {intreval: 1s}
        """,
    )
    top = only(found, "instance")
    assert (at(top), top.message, top.hint) == (
        "profiles/typo.yaml:3",
        "unknown key 'instance'",
        "did you mean 'instances'?",
    )
    nested = only(found, "router.prot")
    assert (at(nested), nested.message, nested.hint) == (
        "profiles/typo.yaml:5",
        "unknown key 'prot'",
        "did you mean 'port'?",
    )
    assert only(found, "health.intreval").hint == "did you mean 'interval'?"
    assert len(found) == 3


def test_wrong_types(ws: Path) -> None:
    found = issues(
        ws,
        "types",
        """\
        name: types
        recipe: web
        instances: two
        resources:
          memory: lots
          cpus: "1"
        ttl: soon
        backend: kvm
        """,
    )
    inst = only(found, "instances")
    assert (at(inst), inst.message) == ("profiles/types.yaml:3", "expected an integer, got 'two'")
    mem = only(found, "resources.memory")
    assert at(mem) == "profiles/types.yaml:5" and mem.message.startswith("invalid size 'lots'")
    assert "512M" in mem.message
    assert only(found, "resources.cpus").message == "expected a number, got '1'"
    ttl = only(found, "ttl")
    assert at(ttl) == "profiles/types.yaml:7" and ttl.message.startswith("invalid duration 'soon'")
    assert "expected one of" in only(found, "backend").message
    assert len(found) == 5


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("instances: 65", "instances", "less than or equal to 64"),
        ("resources: {memory: 16M}", "resources.memory", "less than the minimum of 32M"),
        ("resources: {cpus: 0}", "resources.cpus", "greater than 0"),
        ("ports: [{host: 0, container: 80}]", "ports[0].host", "greater than or equal to 1"),
        ("ports: [{host: 80, container: 80, address: localhost}]", "ports[0].address", "not an IPv4 address"),
        ("ports: [{host: 80}]", "ports[0].container", "missing required key 'container'"),
        ("mounts: [{src: /tmp, dest: data}]", "mounts[0].dest", "must be an absolute path"),
        ("mounts: [{src: /tmp, dest: /a/../b}]", "mounts[0].dest", "must not contain '..'"),
        ("env: {bad-key: x}", "env.bad-key", "not a valid variable name"),
        ("ttl: 0s", "ttl", "must be more than 0"),
        ("max_per_owner: 0", "max_per_owner", "greater than or equal to 1"),
        ("health: {path: healthz}", "health.path", "must be a URL path"),
        ("health: {interval: 5m, timeout: 1m}", "health", "interval must not be longer than the timeout"),
        ("router: {port: 70000}", "router.port", "1-65535 or 'auto'"),
        ("router: {server_name: 'a; b'}", "router.server_name", "one nginx server name"),
        ("image: 'Web:Latest'", "image", "not an image reference"),
        ("extends: ../prod", "extends", "not a valid parent profile name"),
    ],
)
def test_bad_values(ws: Path, line: str, path: str, message: str) -> None:
    body = "name: bad\n" + ("" if line.startswith("image") else "recipe: web\n") + line + "\n"
    found = issues(ws, "bad", body)
    issue = only(found, path)
    assert message in issue.message, str(issue)
    assert issue.location.file == "profiles/bad.yaml" and issue.location.line is not None


def test_both_recipe_and_image_in_one_file(ws: Path) -> None:
    found = issues(ws, "both", "name: both\nrecipe: web\nimage: web:v2\n")
    issue = only(found, "image")
    assert at(issue) == "profiles/both.yaml:3" and "not both" in issue.message
    # also when the file is a parent: reported in that file
    write(ws, "both", "name: both\nrecipe: web\nimage: web:v2\n")
    found = issues(ws, "kid", "name: kid\nextends: both\n")
    assert [(at(i), i.path) for i in found] == [("profiles/both.yaml:3", "image")]


def test_neither_recipe_nor_image_after_merge(ws: Path) -> None:
    write(ws, "top", "name: top\ninstances: 2\n")
    found = issues(ws, "mid", "name: mid\nextends: top\n")
    issue = only(found, "recipe")
    assert at(issue) == "profiles/mid.yaml:1"
    assert "give 'recipe' or 'image'" in issue.message
    # a child can clear the inherited recipe, but must then give an image
    found = issues(ws, "cleared", "name: cleared\nextends: prod\nrecipe: null\n")
    assert only(found, "recipe").message.startswith("give 'recipe' or 'image'")


def test_extends_cycle(ws: Path) -> None:
    write(ws, "a", "name: a\nextends: b\nrecipe: web\n")
    write(ws, "b", "name: b\nextends: a\n")
    found = issues(ws, "a")
    assert len(found) == 1
    assert (at(found[0]), found[0].path) == ("profiles/b.yaml:2", "extends")
    assert found[0].message == "extends cycle: profiles/a.yaml -> profiles/b.yaml -> profiles/a.yaml"
    found = issues(ws, "self", "name: self\nextends: self\n")
    assert found[0].message == "extends cycle: profiles/self.yaml -> profiles/self.yaml"


def test_missing_parent(ws: Path) -> None:
    found = issues(ws, "orphan", "name: orphan\nrecipe: web\nextends: qa\n")
    assert len(found) == 1
    issue = found[0]
    assert (at(issue), issue.path) == ("profiles/orphan.yaml:3", "extends")
    assert issue.message == "parent profile 'qa' not found (looked for profiles/qa.yaml)"
    assert issue.hint == "profiles there: dev, prod, staging"


def test_name_must_match_file(ws: Path) -> None:
    found = issues(ws, "qa", "name: kiwi\nextends: staging\n")
    issue = only(found, "name")
    assert at(issue) == "profiles/qa.yaml:1"
    assert issue.message == "name 'kiwi' does not match the file name 'qa.yaml'"
    # a name with '-' would be ambiguous with env suffixes
    found = issues(ws, "qa", "name: qa-1\nextends: staging\n")
    assert any(i.path == "name" and "not a valid profile name" in i.message for i in found)


def test_mount_src_must_exist(ws: Path) -> None:
    (ws / "data").mkdir()
    found = issues(
        ws,
        "mnt",
        """\
        name: mnt
        extends: dev
        mounts:
          - {src: data, dest: /data}
          - {src: missing/dir, dest: /x, readonly: true}
          - {src: /definitely/not/here, dest: /y}
        """,
    )
    assert [(at(i), i.path) for i in found] == [
        ("profiles/mnt.yaml:5", "mounts[1].src"),
        ("profiles/mnt.yaml:6", "mounts[2].src"),
    ]
    assert (
        found[0].message == f"mount source 'missing/dir' not found on the host (looked for {ws}/missing/dir)"
    )
    # relative to the workspace (display_root), not to the profile's directory or the cwd
    (ws / "missing" / "dir").mkdir(parents=True)
    (ws / "profiles" / "mnt.yaml").write_text(
        "name: mnt\nextends: dev\nmounts: [{src: missing/dir, dest: /x}]\n"
    )
    assert load(ws, "mnt").profile.mounts[0].src == "missing/dir"


def test_port_clashes(ws: Path) -> None:
    found = issues(
        ws,
        "ports",
        """\
        name: ports
        extends: prod
        ports:
          - {host: 2222, container: 22}
          - {host: 2222, container: 22, proto: udp}
          - {host: 2222, container: 23, address: 0.0.0.0}
          - {host: 8080, container: 80}
        """,
    )
    assert [(at(i), i.path) for i in found] == [
        ("profiles/ports.yaml:6", "ports[2].host"),
        ("profiles/ports.yaml:7", "ports[3].host"),
    ]
    assert found[0].message == "host port 2222/tcp on 0.0.0.0 is also used by ports[0].host"
    assert found[1].message == "host port 8080/tcp on 127.0.0.1 is also used by router.port"


def test_many_errors_in_many_files_at_once(ws: Path) -> None:
    write(ws, "parent", "name: parent\nrecipe: web\ninstances: two\nresources: {memry: 1G}\n")
    found = issues(
        ws,
        "child",
        """\
        name: wrong
        extends: parent
        ttl: forever
        router: {prot: 1}
        mounts: [{src: nope, dest: /n}]
        """,
    )
    got = [(at(i), i.path) for i in found]
    assert got == [
        ("profiles/child.yaml:1", "name"),
        ("profiles/child.yaml:3", "ttl"),
        ("profiles/child.yaml:4", "router.prot"),
        ("profiles/child.yaml:5", "mounts[0].src"),
        ("profiles/parent.yaml:3", "instances"),
        ("profiles/parent.yaml:4", "resources.memry"),
    ]
    assert only(found, "resources.memry").hint == "did you mean 'memory'?"
    text = str(ConfigError(found))
    assert text.startswith("6 problems in configuration:")


def test_not_a_mapping_and_empty(ws: Path) -> None:
    assert "top level must be a mapping" in issues(ws, "list", "- a\n- b\n")[0].message
    assert issues(ws, "empty", "")[0].message == "empty file"


# --- models and env names ----------------------------------------------------------------------------


def test_profile_model_alone_requires_recipe_or_image() -> None:
    with pytest.raises(ValidationError, match="give 'recipe' or 'image'"):
        Profile.model_validate({"name": "x"})
    p = Profile.model_validate({"name": "x", "image": "abcdef12"})
    assert p.backend == "lxc" and p.instances == 1 and p.router is None and p.health.timeout == 120
    models: list[type[BaseModel]] = [Profile, Resources, PortMap, Mount, Health, Router]
    for cls in models:
        assert cls.model_config.get("extra") == "forbid", cls
        assert all(f.description for f in cls.model_fields.values()), cls


@pytest.mark.parametrize(
    ("env", "profile"),
    [("staging-42", "staging"), ("prod", "prod"), ("dev-alice", "dev"), ("a", "a"), ("qa2-x1", "qa2")],
)
def test_env_profile_name(env: str, profile: str) -> None:
    assert env_profile_name(env) == profile


@pytest.mark.parametrize(
    "env",
    ["", "Staging", "staging-", "-42", "staging-4-2", "staging_42", "42", "staging-" + "x" * 21, "a" * 32],
)
def test_env_profile_name_rejects(env: str) -> None:
    with pytest.raises(ValueError, match=r"PROFILE or PROFILE-SUFFIX.*lowercase"):
        env_profile_name(env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backend: lxc\nremote: https://h:8443\n", "has no remote hosts"),
        ("backend: docker\nremote: https://h:8443\n", "not a remote for the docker backend"),
        ("backend: lxd\nremote: ssh://h\n", "not a remote for the lxd backend"),
        ("backend: docker\ncapabilities: [NET_BIND]\n", "did you mean NET_BIND_SERVICE"),
        ("backend: docker\ncapabilities: [FLY]\n", "not a Linux capability"),
    ],
)
def test_backend_remote_and_capabilities_are_checked(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "remote", f"name: remote\nrecipe: web\n{text}")
    assert message in str(info.value) + "".join(str(i) for i in info.value.issues)


def test_backend_remote_and_capabilities_are_accepted(tmp_path: Path) -> None:
    p = load(
        tmp_path,
        "remote",
        "name: remote\nrecipe: web\nbackend: docker\nremote: ssh://deploy@web1\n"
        "capabilities: [cap_net_raw]\n",
    ).profile
    assert p.remote == "ssh://deploy@web1" and p.capabilities == ["NET_RAW"]
    assert load(tmp_path, "v", "name: v\nrecipe: web\nbackend: libvirt\nremote: qemu+ssh://h/system\n")
