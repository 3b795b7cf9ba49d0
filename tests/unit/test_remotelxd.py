"""The lxd backend on a production host, its control side (the real LXD on a host is in
tests/integration/test_lxd_hosts.py): the trust answer of a host is checked before use (a cert that
is not PEM, a huge answer, a bad port are refused, naming the host), the server certificate is
pinned under the URL of the host's LXD and the trust call is made once per command, the app is
published by the host agent's DNAT rules at the lxc/docker port, a call that fails because the host is gone is
the transport's HostUnreachable, every call names the host's restricted project; and the one import
sequence both LXD clients run, which trusts an image by its fingerprint, never by its alias."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pylxd.exceptions
import pytest
import requests

from sandbox.backends.base import BackendError, InstanceSpec
from sandbox.backends.lxdapi import self_signed, server_cert
from sandbox.backends.remotelxd import RemoteLxd, trust_answer
from sandbox.envs.registry import make_backend_registry
from sandbox.errors import SandboxError
from sandbox.events import null_sink
from sandbox.hosts.transport import HostError, HostUnreachable
from sandbox.imageformats.lxd import import_lxd_image
from sandbox.settings import Settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace
from tests.unit.imagefactory import make_image

PEM = self_signed("root@web1", days=1)[0].decode()


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (["not", "a", "document"], "not a document"),
        ({"certificate": PEM, "port": "8443"}, "is not a port"),
        ({"certificate": PEM, "port": True}, "is not a port"),
        ({"certificate": PEM, "port": 0}, "is not a port"),
        ({"certificate": PEM, "port": 70000}, "is not a port"),
        ({"certificate": PEM}, "is not a port"),
        ({"certificate": "hello", "port": 8443}, "not one PEM certificate"),
        ({"certificate": PEM, "port": 8443, "local": "yes"}, "not a boolean"),
        ({"certificate": PEM + PEM, "port": 8443}, "not one PEM certificate"),
        ({"certificate": None, "port": 8443}, "not one PEM certificate"),
        # a huge answer: refused by its size, never parsed
        (
            {"certificate": PEM.replace("\n-----END", "A" * (20 << 20) + "\n-----END"), "port": 8443},
            "at most",
        ),
        # PEM in shape, not a certificate
        (
            {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "port": 8443},
            "parse",
        ),
    ],
)
def test_a_hosts_trust_answer_is_checked_before_use(answer: Any, what: str) -> None:
    with pytest.raises(HostError) as e:
        trust_answer("web1", answer)
    assert what in e.value.message and e.value.host == "web1" and "host web1" in e.value.message


def test_a_good_trust_answer() -> None:
    assert trust_answer("web1", {"certificate": PEM, "port": 9443, "extra": 1}) == (PEM.encode(), 9443, False)
    assert trust_answer("web1", {"certificate": PEM, "port": 9443, "local": True})[2] is True


class FakeTransport:
    name = "web1"

    def __init__(self) -> None:
        self.alive = True
        self.runs = 0

    def run(self, argv: list[str], **kw: Any) -> Any:
        self.runs += 1
        if not self.alive:
            raise HostUnreachable("host web1 (root@10.0.0.11) is unreachable", hint="is it up?", host="web1")
        return subprocess.CompletedProcess(argv, 0, b"", b"")


class FakeAgent:
    name = "web1"

    def __init__(self, answer: Any) -> None:
        self.transport = FakeTransport()
        self.answer = answer
        self.calls: list[tuple[str, tuple[str, ...], Any]] = []

    def call(self, op: str, *args: str, request: Any = None, timeout: float | None = 120) -> Any:
        self.calls.append((op, args, request))
        return self.answer


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("SANDBOX_CONFIG", str(tmp_path / "config"))
    (tmp_path / "recipes").mkdir()
    return Workspace(tmp_path)


def on_host(ws: Workspace, answer: Any) -> tuple[RemoteLxd, FakeAgent]:
    agent = FakeAgent(answer)
    ctx = make_backend_registry(ws, Settings(), null_sink).ctx
    return RemoteLxd(ctx, agent, "10.0.0.11"), agent  # type: ignore[arg-type]


def test_the_servers_certificate_is_pinned_from_the_ssh_answer_once_per_command(ws: Workspace) -> None:
    b, agent = on_host(ws, {"certificate": PEM, "port": 9443, "listen": "[::]:9443", "trust": "added"})
    assert b.remote == "https://10.0.0.11:9443" and b.remote == "https://10.0.0.11:9443"
    [(op, args, request)] = agent.calls  # one trust call, whatever asks for the URL
    assert op == "lxd-trust" and args == ()
    assert request["address"] == "10.0.0.11" and request["name"].startswith("sandbox@")
    assert request["cert"].startswith("-----BEGIN CERTIFICATE-----")  # sandbox's client certificate
    assert server_cert(b.remote).read_bytes() == PEM.encode()
    # what is not ours to have: the host's `remote:`, its hostile answer
    assert "remote" not in b.capabilities and b.name == "lxd"
    bad, _ = on_host(ws, {"certificate": "x", "port": 9443})
    with pytest.raises(HostError, match="not one PEM"):
        bad.check()


def test_every_call_to_a_hosts_lxd_names_its_restricted_project(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pylxd's client and the `lxc` client (exec -i, logs) alike; this machine's LXD stays in the
    default project."""
    import sandbox.backends.lxd as lxd_module
    from sandbox.backends.lxd import LxdBackend
    from sandbox.backends.lxdapi import lxc_conf

    made: list[tuple[str | None, str | None]] = []
    monkeypatch.setattr(lxd_module, "connect", lambda remote, project=None: made.append((remote, project)))
    b, _ = on_host(ws, {"certificate": PEM, "port": 8443})
    b.client  # noqa: B018
    LxdBackend(make_backend_registry(ws, Settings(), null_sink).ctx).client  # noqa: B018
    assert made == [("https://10.0.0.11:8443", "sandbox"), (None, None)]
    assert "    project: sandbox\n" in (lxc_conf(b.remote, b.project) / "config.yml").read_text()
    assert "project" not in (lxc_conf(b.remote) / "config.yml").read_text()  # a `remote:` LXD


def test_the_app_is_published_by_the_agents_dnat_after_start_and_removed_before_destroy(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the lxc/docker port, never by a proxy device; an instance made in an earlier command is not
    published again here (the host agent's lxd-trust makes its recorded rules again)."""
    from sandbox.backends.lxd import LxdBackend

    done: list[str] = []
    for method in ("create", "start", "destroy"):
        monkeypatch.setattr(LxdBackend, method, lambda self, *a, m=method: done.append(m))
    b, agent = on_host(ws, {"certificate": PEM, "port": 8443})
    spec = InstanceSpec(
        name="prod-0", env="prod", index=0, image="sha256:" + "a" * 64, address="10.213.0.7", app_port=8000
    )
    b.create(spec)
    b.start("prod-0")
    b.start("prod-1")  # made by an earlier command
    b.destroy("prod-0")
    assert done == ["create", "start", "start", "destroy"]
    calls = [(op, req) for op, _, req in agent.calls if op != "lxd-trust"]
    ws_id = b.ws_id
    assert calls == [
        (
            "lxd-publish",
            {"name": "prod-0", "workspace": ws_id, "port": 20007, "address": "10.213.0.7", "app_port": 8000},
        ),
        ("lxd-publish", {"name": "prod-0", "workspace": ws_id, "remove": True}),
    ]
    assert agent.calls[0][0] == "lxd-trust"  # trusted (and the host's publishing settled) first
    assert b.published(spec) == "10.0.0.11:20007" and b.address("prod-0") == "10.0.0.11"


def test_a_call_that_fails_because_the_host_is_gone_names_the_host(ws: Workspace) -> None:
    b, agent = on_host(ws, {"certificate": PEM, "port": 8443})
    with pytest.raises(BackendError) as e, b._api("starting prod-0"):
        raise requests.exceptions.ConnectionError("connection reset")
    assert not isinstance(e.value, HostUnreachable) and "host web1" in e.value.message
    agent.transport.alive = False
    with pytest.raises(HostUnreachable) as dead, b._api("starting prod-0"):
        raise requests.exceptions.ConnectTimeout("timed out")
    assert dead.value.host == "web1"
    runs = agent.transport.runs
    with pytest.raises(BackendError) as e, b._api("creating prod-0"):  # LXD answered: the host is not asked
        raise pylxd.exceptions.LXDAPIException(FakeResponse())
    assert not isinstance(e.value, HostUnreachable) and agent.transport.runs == runs


class FakeResponse:
    status_code = 409

    def json(self) -> dict[str, Any]:
        return {"error": "name in use"}


class Images:
    """An LxdImageApi that records what it was asked: `aliases` name fingerprints, `held` are the
    images LXD has (`wrong`: its fingerprint of an upload is not the bytes' sha256)."""

    def __init__(self, aliases: dict[str, str] | None = None, held: set[str] | None = None) -> None:
        self.aliases = dict(aliases or {})
        self.held = set(held or ())
        self.wrong = False
        self.uploads: list[str] = []
        self.set: list[tuple[str, str, bool]] = []

    def alias_target(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def has_image(self, fingerprint: str) -> bool:
        return fingerprint in self.held

    def upload(self, tarball: Path) -> str:
        import hashlib

        self.uploads.append(tarball.name)
        fp = "0" * 64 if self.wrong else hashlib.sha256(tarball.read_bytes()).hexdigest()
        self.held.add(fp)
        return fp

    def set_alias(self, alias: str, fingerprint: str, description: str, *, exists: bool) -> None:
        assert exists == (alias in self.aliases)
        self.aliases[alias] = fingerprint
        self.set.append((alias, fingerprint, exists))


def test_the_one_import_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore(tmp_path / "store")
    img = make_image(store, tmp_path / "work")
    tmp = tmp_path / "tmp"
    fresh = Images()
    fp, imported = import_lxd_image(store, img.digest, "a", fresh, tmp, null_sink)
    assert imported and len(fresh.uploads) == 1 and fresh.uploads[0].startswith(".lxd-")
    assert fresh.set == [("a", fp, False)] and store.lxd_fingerprint(img.digest) == fp
    # from now on the store's record of the tarball's sha256 is what an image is checked against:
    # no tarball is written to learn it again
    import sandbox.imageformats.lxd as fmt

    monkeypatch.setattr(fmt, "write_lxd_tarball", lambda *a: pytest.fail("a tarball was written"))
    assert import_lxd_image(store, img.digest, "a", fresh, tmp, null_sink) == (fp, False)
    held = Images(held={fp})  # the same bytes under another alias: only the alias is added
    assert import_lxd_image(store, img.digest, "b", held, tmp, null_sink) == (fp, True)
    assert held.uploads == [] and held.set == [("b", fp, False)]
    monkeypatch.undo()
    wrong = Images()
    wrong.wrong = True
    with pytest.raises(SandboxError, match=r"LXD imported image .* as '0+', not [0-9a-f]{64}") as e:
        import_lxd_image(ImageStore(store.root), img.digest, "c", wrong, tmp, null_sink)
    assert e.value.hint is not None and "changed on its way" in e.value.hint
    assert "c" not in wrong.aliases and not list(tmp.glob(".lxd-*"))  # no temp tarball left


def test_an_alias_someone_else_pointed_at_another_image_is_not_trusted(tmp_path: Path) -> None:
    """`sandbox-<12 hex>` naming an image that is not the one this store's tarball made (whoever may
    import images into that LXD can make one, first): ours is imported and the alias points at it;
    instances are made from the fingerprint returned, never from the alias."""
    store = ImageStore(tmp_path / "store")
    img = make_image(store, tmp_path / "work")
    alias, foreign = f"sandbox-{img.digest[7:19]}", "e" * 64
    lxd = Images(aliases={alias: foreign}, held={foreign})
    fp, imported = import_lxd_image(store, img.digest, alias, lxd, tmp_path / "tmp", null_sink)
    assert imported and fp != foreign and len(lxd.uploads) == 1
    assert lxd.set == [(alias, fp, True)] and lxd.aliases[alias] == fp
    # the same when this store knew the image already (recorded) and the alias moved afterwards
    lxd.aliases[alias] = foreign
    assert import_lxd_image(store, img.digest, alias, lxd, tmp_path / "tmp", null_sink) == (fp, True)
    assert lxd.aliases[alias] == fp and len(lxd.uploads) == 1  # LXD held our bytes: none sent again


def test_an_image_on_a_host_is_made_from_the_fingerprint_the_agent_answers_once_per_command(
    ws: Workspace,
) -> None:
    b, agent = on_host(ws, {"alias": "x", "fingerprint": "d" * 64, "imported": False, "seconds": 0.1})
    digest = "sha256:" + "c" * 64
    b.prepare_image(digest)
    b.prepare_image(digest)
    assert agent.calls == [("lxd-import", (digest,), None)]  # checked on the host, once per command
    assert b._fingerprints == {digest: "d" * 64}
    for answer in ({"imported": True}, {"fingerprint": "D" * 64}, {"fingerprint": "d" * 63 + "\n"}, []):
        bad, _ = on_host(ws, answer)
        with pytest.raises(HostError, match="no image fingerprint"):
            bad.prepare_image(digest)


def test_the_client_certificate_is_made_once_when_hosts_ask_for_it_in_parallel(ws: Workspace) -> None:
    """The hosts of an env are checked in parallel: each must get the same, matching pair."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from sandbox.backends.lxdapi import client_cert

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = set(pool.map(lambda _: client_cert(), range(16)))
    [(crt, key)] = pairs
    public = x509.load_pem_x509_certificate(crt.read_bytes()).public_key()
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert public.public_bytes(*raw) == private.public_key().public_bytes(*raw)
    assert key.stat().st_mode & 0o077 == 0


def test_a_ca_certificate_is_not_pinned() -> None:
    """Pinned as requests' `verify`, a CA would vouch for every certificate it signed."""
    ca = self_signed("evil CA", days=1, ca=True)[0].decode()
    with pytest.raises(HostError) as e:
        trust_answer("web1", {"certificate": ca, "port": 8443})
    assert "is a CA certificate" in e.value.message


class NotFound(Exception):
    """What pylxd raises for a 404 (the backend tells it by its name)."""


class FakeSnapshots:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def all(self) -> list[Any]:  # what pylxd lists in a project: names with LXD's `?project=`
        return [SimpleNamespace(name="s1?project=sandbox")]

    def get(self, name: str) -> Any:
        if name != "s1":
            raise NotFound(name)
        return SimpleNamespace(delete=lambda wait: self.deleted.append(name))


class FakeClient:
    """A pylxd client of a project: one instance of the workspace with a snapshot, two images."""

    def __init__(self, ws_tag: str) -> None:
        self.snapshots = FakeSnapshots()
        inst = SimpleNamespace(
            name="prod-0", config={"user.sandbox.workspace": ws_tag}, snapshots=self.snapshots
        )
        self.instances = SimpleNamespace(get=lambda name: inst)
        listing = [
            {
                "properties": {"sandbox.digest": "sha256:" + "b" * 64},
                "aliases": [{"name": "sandbox-bbbbbbbbbbbb"}],
            },
            {"properties": {}, "aliases": []},
        ]
        answer = SimpleNamespace(json=lambda: {"metadata": listing})
        self.api = SimpleNamespace(images=SimpleNamespace(get=lambda params: answer))


def test_snapshots_and_images_of_a_project_are_found_by_name_not_by_a_listings_urls(ws: Workspace) -> None:
    """pylxd names what it lists after the URLs LXD gives, which in a project end in `?project=`."""
    b, _ = on_host(ws, {"certificate": PEM, "port": 8443})
    b._client = fake = FakeClient(b.ws_id)
    b.delete_snapshot("prod-0", "s1")
    b.delete_snapshot("prod-0", "gone")  # absent: nothing to do
    assert fake.snapshots.deleted == ["s1"]
    assert b.images() == ["sha256:" + "b" * 64]
