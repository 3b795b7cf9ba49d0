"""Production hosts in profiles (issue 11): the schema, every bad input located, resolved data, placement."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.config import LoadedProfile, Profile, load_profile
from sandbox.config.placement import counts, place
from sandbox.config.profile_hosts import Host
from sandbox.config.resolved import HostSpec, ResolvedProfile
from sandbox.errors import ConfigError, ConfigIssue

HOSTS3 = """\
hosts:
  - {name: web1, ssh: deploy@10.0.0.11}
  - {name: web2, ssh: deploy@10.0.0.12}
  - {name: web3, ssh: deploy@10.0.0.13}
"""


def load(root: Path, name: str, text: str) -> LoadedProfile:
    path = root / "profiles" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return load_profile(path, display_root=root)


def problems(root: Path, text: str, name: str = "prod") -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(root, name, f"name: {name}\nrecipe: web\n{text}")
    return info.value.issues


def one(root: Path, text: str) -> ConfigIssue:
    found = problems(root, text)
    assert len(found) == 1, [str(i) for i in found]
    return found[0]


def where(issue: ConfigIssue) -> tuple[str, str]:
    """('profiles/prod.yaml:5', 'hosts[1].name') of an issue."""
    return f"{issue.location.file}:{issue.location.line}", issue.path


# --- valid profiles ------------------------------------------------------------------------------------


def test_hosts_spread_evenly(tmp_path: Path) -> None:
    lp = load(
        tmp_path,
        "prod",
        f"name: prod\nrecipe: web\nbackend: lxc\n{HOSTS3}instances: 6\n"
        "router: {host: lb1, ssh: deploy@10.0.0.10, port: 80}\n",
    )
    spec = ResolvedProfile.from_data(lp.profile.model_dump(mode="json"))
    assert [h.name for h in spec.hosts] == ["web1", "web2", "web3"]
    assert spec.hosts[0] == HostSpec("web1", "deploy@10.0.0.11", None, {}, None)
    assert spec.instances == 6
    assert spec.router is not None and (spec.router.host, spec.router.ssh) == ("lb1", "deploy@10.0.0.10")
    placed = place(spec.hosts, spec.instances)
    assert placed == ["web1", "web2", "web3", "web1", "web2", "web3"]
    assert counts(placed) == {"web1": 2, "web2": 2, "web3": 2}
    assert ResolvedProfile.from_data(spec.to_data()) == spec


def test_per_host_counts_give_instances(tmp_path: Path) -> None:
    text = """\
        name: prod
        recipe: web
        hosts:
          - name: web1
            ssh: deploy@web1.example.com:2222
            address: 10.0.0.11
            labels: {zone: a, rack: 7, ssd: true}
            instances: 3
          - {name: web2, ssh: web2, instances: 1}
          - {name: web3, ssh: root@10.0.0.13, instances: 0}
        router: {host: web2}
        """
    lp = load(tmp_path, "prod", text)
    assert lp.profile.instances == 4
    spec = ResolvedProfile.from_data(lp.profile.model_dump(mode="json"))
    assert spec.instances == 4
    assert spec.hosts[0].labels == {"zone": "a", "rack": "7", "ssd": "true"}
    assert spec.hosts[0].address == "10.0.0.11" and spec.hosts[0].ssh == "deploy@web1.example.com:2222"
    assert spec.router is not None and (spec.router.host, spec.router.ssh) == ("web2", "web2")
    placed = place(spec.hosts, spec.instances)
    assert placed == ["web1", "web2", "web1", "web1"]
    assert counts(placed) == {"web1": 3, "web2": 1}
    # written, the sum must match
    assert load(tmp_path, "prod", text + "instances: 4\n").profile.instances == 4


def test_placement_spreads_uneven_counts() -> None:
    hosts = [HostSpec(f"web{i}", f"web{i}", None, {}, None) for i in (1, 2, 3)]
    assert counts(place(hosts, 7)) == {"web1": 3, "web2": 2, "web3": 2}
    assert place(hosts, 2) == ["web1", "web2"] and place(hosts, 0) == []
    with pytest.raises(ValueError, match="no hosts"):
        place([], 1)
    counted = [HostSpec("a", "a", None, {}, 2), HostSpec("b", "b", None, {}, 1)]
    with pytest.raises(ValueError, match="add up to 3, not 4"):
        place(counted, 4)


def test_a_profile_without_hosts_is_unchanged(tmp_path: Path) -> None:
    lp = load(tmp_path, "prod", "name: prod\nrecipe: web\ninstances: 2\nrouter: {port: 8080}\n")
    data = lp.profile.model_dump(mode="json")
    assert data["hosts"] == [] and data["router"]["host"] is None and data["router"]["ssh"] is None
    spec = ResolvedProfile.from_data(data)
    assert spec.hosts == () and spec.instances == 2


def test_old_resolved_data_without_hosts_loads(tmp_path: Path) -> None:
    lp = load(tmp_path, "prod", "name: prod\nrecipe: web\ninstances: 2\nrouter: {port: 8080}\n")
    old = json.loads(json.dumps(lp.profile.model_dump(mode="json")))
    del old["hosts"], old["router"]["host"], old["router"]["ssh"]
    spec = ResolvedProfile.from_data(old)
    assert spec.hosts == () and spec.router is not None
    assert spec.router.host is None and spec.router.ssh is None
    assert spec == ResolvedProfile.from_data(lp.profile.model_dump(mode="json"))


def test_tampered_resolved_data_is_refused(tmp_path: Path) -> None:
    lp = load(tmp_path, "prod", f"name: prod\nrecipe: web\n{HOSTS3}instances: 3\n")
    data = lp.profile.model_dump(mode="json")
    data["hosts"][1]["ssh"] = "-oProxyCommand=sh"
    with pytest.raises(ValueError, match="looks like an ssh option"):
        ResolvedProfile.from_data(data)


def test_a_child_runs_locally_with_empty_hosts(tmp_path: Path) -> None:
    load(tmp_path, "prod", f"name: prod\nrecipe: web\n{HOSTS3}instances: 6\n")
    lp = load(tmp_path, "staging", "name: staging\nextends: prod\nhosts: []\ninstances: 1\nmounts: []\n")
    assert lp.profile.hosts == [] and lp.profile.instances == 1


def test_rules_across_keys_wait_for_the_merge(tmp_path: Path) -> None:
    """A parent's hosts and a child's instances: neither file alone is judged by the other's keys."""
    load(tmp_path, "base", "name: base\nrecipe: web\ninstances: 3\n")
    lp = load(tmp_path, "prod", f"name: prod\nextends: base\n{HOSTS3}")
    assert lp.profile.instances == 3 and len(lp.profile.hosts) == 3
    load(tmp_path, "base", "name: base\nrecipe: web\ninstances: 2\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "prod", f"name: prod\nextends: base\n{HOSTS3}")
    (issue,) = info.value.issues
    assert where(issue) == ("profiles/base.yaml:3", "instances")  # where the inherited value is written
    assert "leaves web3 empty" in issue.message


# --- bad input, each at its file:line and key path -----------------------------------------------------


def test_duplicate_host_name(tmp_path: Path) -> None:
    issue = one(tmp_path, "instances: 2\nhosts:\n  - {name: web1, ssh: a@h1}\n  - {name: web1, ssh: a@h2}\n")
    assert where(issue) == ("profiles/prod.yaml:6", "hosts[1].name")
    assert "duplicate host name 'web1' (also hosts[0])" in issue.message and issue.hint


def test_duplicate_ssh_target(tmp_path: Path) -> None:
    issue = one(tmp_path, "instances: 2\nhosts:\n  - {name: web1, ssh: a@H1}\n  - {name: web2, ssh: a@h1}\n")
    assert where(issue) == ("profiles/prod.yaml:6", "hosts[1].ssh")
    assert "duplicate ssh target 'a@h1'" in issue.message and issue.hint


def test_instances_lower_than_hosts(tmp_path: Path) -> None:
    issue = one(tmp_path, f"instances: 2\n{HOSTS3}")
    assert where(issue) == ("profiles/prod.yaml:3", "instances")
    assert issue.message == "instances: 2 spread over 3 hosts leaves web3 empty"
    assert issue.hint is not None and "per-host `instances:`" in issue.hint
    issue = one(tmp_path, HOSTS3)  # omitted: 1
    assert where(issue) == ("profiles/prod.yaml:3", "hosts")
    assert "leaves web2 and web3 empty" in issue.message


def test_per_host_counts_all_or_none(tmp_path: Path) -> None:
    issue = one(tmp_path, "hosts:\n  - {name: web1, ssh: h1, instances: 2}\n  - {name: web2, ssh: h2}\n")
    assert where(issue) == ("profiles/prod.yaml:5", "hosts[1]")
    assert "has no `instances:`" in issue.message and issue.hint


def test_per_host_counts_must_add_up(tmp_path: Path) -> None:
    hosts = "hosts:\n  - {name: web1, ssh: h1, instances: 2}\n  - {name: web2, ssh: h2, instances: 2}\n"
    issue = one(tmp_path, "instances: 3\n" + hosts)
    assert where(issue) == ("profiles/prod.yaml:3", "instances")
    assert "add up to 4" in issue.message and issue.hint is not None and "omit" in issue.hint
    zero = "hosts:\n  - {name: web1, ssh: h1, instances: 0}\n"
    assert where(one(tmp_path, zero)) == ("profiles/prod.yaml:3", "hosts")
    negative = "hosts:\n  - {name: web1, ssh: h1, instances: -1}\n"
    assert where(one(tmp_path, negative))[1] == "hosts[0].instances"


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ("remote: ssh://deploy@h\nbackend: docker\n", "remote", "`remote:`"),
        ("mounts: [{src: /, dest: /srv}]\n", "mounts", "image"),
        ("ports: [{host: 8443, container: 443}]\n", "ports", "router"),
    ],
)
def test_hosts_exclude_other_keys(tmp_path: Path, text: str, path: str, hint: str) -> None:
    issue = one(tmp_path, f"instances: 3\n{text}{HOSTS3}")
    assert where(issue) == ("profiles/prod.yaml:4", path)
    assert issue.hint is not None and hint in issue.hint


@pytest.mark.parametrize("engine", ["docker", "lxd", "libvirt"])
def test_docker_lxd_and_libvirt_run_on_hosts(tmp_path: Path, engine: str) -> None:
    lp = load(tmp_path, "prod", f"name: prod\nrecipe: web\ninstances: 3\nbackend: {engine}\n{HOSTS3}")
    assert lp.profile.backend == engine and [h.name for h in lp.profile.hosts] == ["web1", "web2", "web3"]


def test_at_most_32_hosts(tmp_path: Path) -> None:
    hosts = "".join(f"  - {{name: web{i}, ssh: h{i}}}\n" for i in range(33))
    issue = one(tmp_path, f"instances: 64\nhosts:\n{hosts}")
    assert where(issue) == ("profiles/prod.yaml:4", "hosts")
    assert "at most 32" in issue.message


@pytest.mark.parametrize(
    ("ssh", "message"),
    [
        ("-oProxyCommand=x", "looks like an ssh option"),
        ("'-oProxyCommand=x'", "looks like an ssh option"),
        ("'deploy@web 1'", "is not an SSH target"),
        ("'deploy@\"web1\"'", "is not an SSH target"),
        ('"deploy@web1\'"', "is not an SSH target"),
        ("deploy@web%h", "is not an SSH target"),
        ('"deploy@web1\\n"', "is not an SSH target"),
        ('"deploy@web1\\nProxyCommand x"', "is not an SSH target"),
        ("deploy@web1:70000", "port 70000 is not 1-65535"),
        ("deploy@web..x", "is not an SSH target"),
        ("12", "expected a string"),
    ],
)
def test_bad_ssh_target(tmp_path: Path, ssh: str, message: str) -> None:
    issue = one(tmp_path, f"hosts:\n  - name: web1\n    ssh: {ssh}\n")
    assert where(issue) == ("profiles/prod.yaml:5", "hosts[0].ssh")
    assert message in issue.message
    if "expected" not in message:
        assert issue.hint is not None and "USER@HOST" in issue.hint


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ("{name: Web1, ssh: h}", "hosts[0].name", "is not a host name"),
        ("{name: -web, ssh: h}", "hosts[0].name", "is not a host name"),
        ("{name: web1, ssh: h, address: 10.0.0.300}", "hosts[0].address", "not an IPv4 address"),
        ("{name: web1, ssh: h, address: 0.0.0.0}", "hosts[0].address", "router can reach"),
        ("{name: web1, ssh: h, labels: {Zone: a}}", "hosts[0].labels.Zone", "not a valid label key"),
        ("{name: web1, ssh: h, labels: {zone: 'a b'}}", "hosts[0].labels.zone", "not a valid label value"),
        ("{name: web1, ssh: h, instances: '2'}", "hosts[0].instances", "expected an integer"),
        ("{name: web1, ssh: h, user: x}", "hosts[0].user", "unknown key 'user'"),
        ("{name: web1}", "hosts[0].ssh", "missing required key 'ssh'"),
    ],
)
def test_bad_host_fields(tmp_path: Path, entry: str, path: str, message: str) -> None:
    issue = one(tmp_path, f"hosts:\n  - {entry}\n")
    assert where(issue) == ("profiles/prod.yaml:4", path)
    assert message in issue.message


# --- router.host / router.ssh ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("router", "path", "message"),
    [
        ("{ssh: deploy@10.0.0.10}", "router.ssh", "needs router.host"),
        ("{host: lb1}", "router.host", "is not one of the hosts (web1, web2, web3)"),
        ("{host: web1, ssh: deploy@10.0.0.12}", "router.ssh", "differs from the ssh target"),
        ("{host: lb1, ssh: deploy@10.0.0.12}", "router.ssh", "is the ssh target of hosts[1] (web2)"),
        ("{host: lb1, ssh: -oProxyCommand=x}", "router.ssh", "looks like an ssh option"),
        ("{host: LB, ssh: lb}", "router.host", "is not a host name"),
    ],
)
def test_router_host_rules(tmp_path: Path, router: str, path: str, message: str) -> None:
    issue = one(tmp_path, f"instances: 3\n{HOSTS3}router: {router}\n")
    assert where(issue) == ("profiles/prod.yaml:8", path)
    assert message in issue.message and issue.hint


def test_router_host_needs_hosts(tmp_path: Path) -> None:
    issue = one(tmp_path, "router: {host: lb1, ssh: deploy@lb1}\n")
    assert where(issue) == ("profiles/prod.yaml:3", "router.host")
    assert "needs the instances on `hosts`" in issue.message


def test_router_ssh_taken_from_its_host(tmp_path: Path) -> None:
    lp = load(tmp_path, "prod", f"name: prod\nrecipe: web\ninstances: 3\n{HOSTS3}router: {{host: web3}}\n")
    assert lp.profile.router is not None and lp.profile.router.ssh == "deploy@10.0.0.13"
    same = load(
        tmp_path,
        "prod",
        f"name: prod\nrecipe: web\ninstances: 3\n{HOSTS3}router: {{host: web3, ssh: deploy@10.0.0.13}}\n",
    )
    assert same.profile.router == lp.profile.router


# --- the model alone --------------------------------------------------------------------------------------


def test_model_alone_and_descriptions() -> None:
    hosts = [{"name": "web1", "ssh": "h1", "instances": 2}, {"name": "web2", "ssh": "h2", "instances": 3}]
    p = Profile.model_validate({"name": "x", "image": "abcdef12", "hosts": hosts})
    assert p.instances == 5
    with pytest.raises(ValidationError, match="leaves web2 empty"):
        Profile.model_validate(
            {
                "name": "x",
                "image": "abcdef12",
                "hosts": [{"name": "web1", "ssh": "h1"}, {"name": "web2", "ssh": "h2"}],
            }
        )
    assert Host.model_config.get("extra") == "forbid"
    assert all(f.description for f in Host.model_fields.values())
    assert Profile.model_fields["hosts"].description
    schema = Profile.model_json_schema()  # the schema still generates, with the new keys described
    assert schema["$defs"]["Host"]["properties"]["ssh"]["description"]
    assert schema["$defs"]["Router"]["properties"]["host"]["description"]


def test_a_child_drops_the_parents_remote_router(tmp_path: Path) -> None:
    load(
        tmp_path, "prod", f"name: prod\nrecipe: web\ninstances: 3\n{HOSTS3}router: {{host: web1, port: 80}}\n"
    )
    child = (
        "name: staging\nextends: prod\nhosts: []\ninstances: 1\nrouter: {host: null, ssh: null, port: auto}\n"
    )
    lp = load(tmp_path, "staging", child)
    assert lp.profile.router is not None and lp.profile.router.host is None and lp.profile.router.ssh is None
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "staging", "name: staging\nextends: prod\nhosts: []\ninstances: 1\n")
    (issue,) = info.value.issues
    assert where(issue) == ("profiles/prod.yaml:8", "router.host")
