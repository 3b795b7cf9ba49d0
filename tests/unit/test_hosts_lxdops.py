"""The host agent's LXD ops against a fake LXD on a unix socket (the real LXD on a host is in
tests/integration/test_lxd_hosts.py): `lxd-trust` returns LXD's own server certificate, makes the
restricted project `sandbox` and trusts the control machine's client certificate once for it alone
(moving an earlier trust there, restricting a loosened project again), makes LXD listen on HTTPS when
it does not and reports the port; malformed requests are refused before LXD is asked; `lxd-import`
imports the unified tarball written from the host's own store into the project, once, and answers
its fingerprint (an alias naming another image is pointed back); `lxd-init` gives an uninitialised
LXD a pool and a root disk; a missing LXD is a clear error."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from sandbox.backends.lxdconfig import PROJECT_CONFIG
from sandbox.errors import SandboxError
from sandbox.hostagent import hostcheck, lxdops
from sandbox.hostagent.main import AgentUsage
from sandbox.store import ImageStore
from tests.unit.imagefactory import Image
from tests.unit.test_hosts_dockerops import host_image, unix_server

__all__ = ["host_image"]  # a fixture of test_hosts_dockerops.py, used here too

SERVER_PEM = "-----BEGIN CERTIFICATE-----\nMIIBserver\n-----END CERTIFICATE-----\n"
OP = "/1.0/operations/0b1c2d3e-0000-4000-8000-000000000001"


def client_pem() -> tuple[str, bytes]:
    """A PEM certificate's text and its DER bytes (any DER SEQUENCE passes the agent's check)."""
    der = b"\x30\x82\x01\x00" + bytes(range(256))
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n", der


class Lxd:
    """What the fake LXD holds and saw (images and aliases: those of the `sandbox` project; a request
    for them in another project finds nothing)."""

    def __init__(self) -> None:
        self.config: dict[str, str] = {}
        self.certs: dict[str, dict[str, Any]] = {}
        self.projects: dict[str, dict[str, str]] = {}  # name → config (the default project is implied)
        self.images: dict[str, bytes] = {}  # fingerprint -> tarball
        self.aliases: dict[str, str] = {}
        self.pools: set[str] = set()
        self.profiles: dict[str, dict[str, dict[str, str]]] = {"default": {}}  # project → devices
        self.instances: dict[str, dict[str, Any]] = {}  # of the `sandbox` project
        self.requests: list[tuple[str, str]] = []
        self.wrong_fingerprint = False
        self.last_upload = ""

    @property
    def profile_devices(self) -> dict[str, dict[str, str]]:
        return self.profiles["default"]


def _handler(lxd: Lxd) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _ok(self, meta: Any = None) -> None:
            self._send(200, {"type": "sync", "status_code": 200, "metadata": meta})

        def _missing(self) -> None:
            self._send(404, {"type": "error", "error_code": 404, "error": "not found"})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def _where(self) -> tuple[str, str, str]:
            """(path, its last part, project) of the request, which is recorded."""
            lxd.requests.append((self.command, self.path))
            path, _, query = self.path.partition("?")
            project = parse_qs(query).get("project", ["default"])[0]
            return path, path.rsplit("/", 1)[1], project

        def do_GET(self) -> None:
            p, last, project = self._where()
            images = project == "sandbox"
            if p == "/1.0":
                env = {"certificate": SERVER_PEM, "server_version": "5.0.fake"}
                self._ok({"config": dict(lxd.config), "environment": env})
            elif p.startswith("/1.0/certificates/"):
                self._ok(lxd.certs[last]) if last in lxd.certs else self._missing()
            elif p.startswith("/1.0/projects/"):
                self._ok({"config": lxd.projects[last]}) if last in lxd.projects else self._missing()
            elif p.startswith("/1.0/images/aliases/"):
                found = images and last in lxd.aliases
                self._ok({"name": last, "target": lxd.aliases[last]}) if found else self._missing()
            elif p.startswith("/1.0/images/"):
                self._ok({}) if images and last in lxd.images else self._missing()
            elif p.startswith(OP + "/wait"):
                fp = "0" * 64 if lxd.wrong_fingerprint else lxd.last_upload
                self._ok({"status_code": 200, "metadata": {"fingerprint": fp}})
            elif p == "/1.0/profiles/default" and project in lxd.profiles:
                self._ok({"devices": lxd.profiles[project]})
            elif p.startswith("/1.0/storage-pools/"):
                self._ok({}) if last in lxd.pools else self._missing()
            elif p == "/1.0/instances" and project in lxd.projects:
                self._ok(list(lxd.instances.values()) if project == "sandbox" else [])
            elif p.startswith("/1.0/instances/") and images and last in lxd.instances:
                self._ok(lxd.instances[last])
            else:
                self._missing()

        def do_PATCH(self) -> None:
            p, last, project = self._where()
            doc = json.loads(self._body())
            if p == "/1.0":
                lxd.config.update(doc["config"])
            elif p.startswith("/1.0/certificates/"):
                lxd.certs[last].update(doc)
            elif p.startswith("/1.0/projects/"):
                lxd.projects[last] = dict(doc["config"])  # as LXD 5.0.2: keys not sent are dropped
            else:
                lxd.profiles[project].update(doc["devices"])
            self._ok()

        def do_PUT(self) -> None:
            p, last, _ = self._where()
            if p.startswith("/1.0/instances/"):
                lxd.instances[last] = {**lxd.instances[last], **json.loads(self._body())}
                self._ok()
                return
            assert p.startswith("/1.0/images/aliases/") and last in lxd.aliases
            lxd.aliases[last] = json.loads(self._body())["target"]
            self._ok()

        def do_POST(self) -> None:
            p, _, project = self._where()
            data = self._body()
            if p == "/1.0/images" and project == "sandbox":
                fp = hashlib.sha256(data).hexdigest()
                lxd.images[fp], lxd.last_upload = data, fp
                self._send(202, {"type": "async", "operation": OP, "metadata": {}})
                return
            doc = json.loads(data)
            if p == "/1.0/certificates":
                lxd.certs[hashlib.sha256(base64.b64decode(doc["certificate"])).hexdigest()] = doc
            elif p == "/1.0/projects":
                lxd.projects[doc["name"]], lxd.profiles[doc["name"]] = dict(doc["config"]), {}
            elif p == "/1.0/images/aliases" and project == "sandbox":
                lxd.aliases[doc["name"]] = doc["target"]
            elif p == "/1.0/storage-pools":
                lxd.pools.add(doc["name"])
            else:
                self._missing()
                return
            self._ok()

    return Handler


@pytest.fixture
def lxd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lxd]:
    state = Lxd()
    monkeypatch.setattr(lxdops, "LXD_SOCKETS", (str(tmp_path / "lxd.sock"),))
    forwarding = tmp_path / "forwarding"
    forwarding.write_text("0\n")
    monkeypatch.setattr(lxdops, "FORWARDING", forwarding)
    monkeypatch.setattr(lxdops, "FORWARDING_CONF", tmp_path / "60-sandbox-lxd.conf")
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "host"))
    with unix_server(tmp_path / "lxd.sock", _handler(state)):
        yield state


def trust(monkeypatch: pytest.MonkeyPatch, request: Any) -> dict[str, Any]:
    monkeypatch.setattr(lxdops, "read_request", lambda: request)
    out: dict[str, Any] = lxdops.lxd_trust([])
    return out


def test_trust_gives_lxds_certificate_trusts_the_client_once_for_its_project_and_listens(
    lxd: Lxd, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, der = client_pem()
    lxd.profiles["default"] = {"root": {"type": "disk", "path": "/", "pool": "fast"}}
    req = {"cert": pem, "name": "sandbox@ctl", "address": "127.0.0.1"}
    out = trust(monkeypatch, req)
    assert out == {
        "certificate": SERVER_PEM,
        "port": 8443,
        "local": True,
        "listen": "127.0.0.1:8443",  # the address the control machine uses is this host's
        "version": "5.0.fake",
        "project": "made",
        "trust": "added",
        "published": {"republished": [], "unpublished": [], "proxies_removed": []},
    }
    # the client is trusted for the restricted project `sandbox` alone, whose profile has the
    # default project's root disk
    [cert] = lxd.certs.values()
    assert cert["restricted"] is True and cert["projects"] == ["sandbox"] and cert["type"] == "client"
    assert base64.b64decode(cert["certificate"]) == der and cert["name"] == "sandbox@ctl"
    assert lxd.projects == {"sandbox": PROJECT_CONFIG}
    assert PROJECT_CONFIG["restricted"] == "true" and PROJECT_CONFIG["restricted.devices.disk"] == "managed"
    assert PROJECT_CONFIG["restricted.containers.privilege"] == "unprivileged"
    assert PROJECT_CONFIG["restricted.devices.proxy"] == "block"  # apps are published by DNAT
    assert lxd.profiles["sandbox"] == {"root": {"type": "disk", "path": "/", "pool": "fast"}}
    assert lxd.config == {"core.https_address": "127.0.0.1:8443"}
    assert lxdops.FORWARDING.read_text() == "1\n"
    # again: nothing changes (no second certificate, project or PATCH)
    before = [r for r in lxd.requests if r[0] != "GET"]
    assert trust(monkeypatch, req)["trust"] == "present"
    assert [r for r in lxd.requests if r[0] != "GET"] == before


def test_trust_moves_an_earlier_trust_to_the_project_and_restricts_a_loosened_project_again(
    lxd: Lxd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier version trusted the certificate for the (unrestricted) default project; an
    administrator may have loosened the project's restrictions. A project named `sandbox` with
    other features is someone else's: refused, named."""
    pem, der = client_pem()
    fp = hashlib.sha256(der).hexdigest()
    lxd.certs[fp] = {"type": "client", "name": "sandbox@ctl", "restricted": True, "projects": ["default"]}
    loose = {**PROJECT_CONFIG, "restricted.containers.privilege": "allow", "restricted.devices.disk": "allow"}
    lxd.projects["sandbox"], lxd.profiles["sandbox"] = loose, {}
    out = trust(monkeypatch, {"cert": pem, "name": "sandbox@ctl", "address": "127.0.0.1"})
    assert (out["trust"], out["project"]) == ("moved", "restricted again")
    assert lxd.certs[fp]["projects"] == ["sandbox"] and lxd.certs[fp]["restricted"] is True
    assert lxd.projects["sandbox"] == PROJECT_CONFIG
    lxd.projects["sandbox"]["features.images"] = "false"
    with pytest.raises(lxdops.LxdEngineError, match="other features") as e:
        trust(monkeypatch, {"cert": pem, "name": "sandbox@ctl", "address": "127.0.0.1"})
    assert e.value.hint and "not sandbox's" in e.value.hint


def test_an_address_that_is_not_the_hosts_listens_everywhere_and_a_set_listener_is_kept(
    lxd: Lxd, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, _ = client_pem()
    # a NAT'ed address (not one of this host's): LXD listens on every address
    out = trust(monkeypatch, {"cert": pem, "name": "s", "address": "203.0.113.9"})
    assert (out["listen"], out["port"], out["local"]) == ("[::]:8443", 8443, False)
    lxd.config["core.https_address"] = "10.1.2.3:9443"
    out = trust(monkeypatch, {"cert": pem, "name": "s", "address": "127.0.0.1"})
    assert (out["listen"], out["port"]) == ("10.1.2.3:9443", 9443)
    assert lxd.config["core.https_address"] == "10.1.2.3:9443"


@pytest.mark.parametrize(
    ("value", "port"),
    [("", None), (":8443", 8443), ("[::]:9443", 9443), ("10.0.0.1", 8443), ("[2001:db8::1]", 8443)],
)
def test_https_port_of_lxds_listen_address(value: str, port: int | None) -> None:
    assert lxdops.https_port(value) == port


@pytest.mark.parametrize("value", ["0.0.0.0:70000", "h:abc", "[::]:0", ":-1"])
def test_a_listen_address_with_a_bad_port_is_an_error(value: str) -> None:
    with pytest.raises(lxdops.LxdEngineError, match="no valid port"):
        lxdops.https_port(value)


@pytest.mark.parametrize(
    "req",
    [
        None,
        {"cert": "not a certificate", "name": "s", "address": "127.0.0.1"},
        {
            "cert": "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "name": "s",
            "address": "1.2.3.4",
        },
        {"cert": "-----BEGIN CERTIFICATE-----\n" + "A" * 20000 + "\n-----END CERTIFICATE-----", "name": "s"},
        {"cert": client_pem()[0], "name": "s; rm -rf /", "address": "127.0.0.1"},
        {"cert": client_pem()[0], "name": "s", "address": "127.0.0.1\n"},
        {"cert": client_pem()[0], "name": "s", "address": "::1"},
        {"cert": client_pem()[0], "name": "s", "address": 2130706433},
    ],
)
def test_malformed_trust_requests_are_refused_before_lxd_is_asked(
    lxd: Lxd, monkeypatch: pytest.MonkeyPatch, req: Any
) -> None:
    with pytest.raises(AgentUsage):
        trust(monkeypatch, req)
    assert lxd.requests == [] and lxd.certs == {}


def test_an_image_from_the_host_store_is_imported_once_into_the_project(
    lxd: Lxd, host_image: tuple[ImageStore, Image]
) -> None:
    store, img = host_image
    out = lxdops.lxd_import([img.digest])
    alias = f"sandbox-{img.digest[7:19]}"
    [(fp, tarball)] = lxd.images.items()
    assert out["alias"] == alias and out["imported"] is True and out["fingerprint"] == fp
    assert lxd.aliases == {alias: fp} and hashlib.sha256(tarball).hexdigest() == fp
    assert store.lxd_fingerprint(img.digest) == fp  # recorded in the host's store
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        names = tar.getnames()
        meta = tar.extractfile("metadata.yaml").read()  # type: ignore[union-attr]
    assert "rootfs/etc/os-release" in names and "templates/hostname.tpl" in names
    # JSON, which every YAML reader (LXD's too) takes: the host's python3 needs no PyYAML
    assert (
        json.loads(meta) == yaml.safe_load(meta)
        and json.loads(meta)["properties"]["sandbox.digest"] == img.digest
    )
    # imported already: only the alias is looked up, and its target checked
    uploads = [r for r in lxd.requests if r[1].startswith("/1.0/images?")]
    again = lxdops.lxd_import([img.digest])
    assert (again["imported"], again["fingerprint"]) == (False, fp)
    assert [r for r in lxd.requests if r[1].startswith("/1.0/images?")] == uploads
    assert not list((Path(store.root).parent / "tmp").glob(".lxd-*"))  # the temp tarball is gone
    # someone with the project's certificate pointed the alias at their image: ours again
    lxd.aliases[alias] = "e" * 64
    assert lxdops.lxd_import([img.digest])["fingerprint"] == fp and lxd.aliases[alias] == fp
    assert ("PUT", f"/1.0/images/aliases/{alias}?project=sandbox") in lxd.requests
    # every image request named the project
    assert all(r[1].endswith("?project=sandbox") for r in lxd.requests if r[1].startswith("/1.0/images"))


def test_an_import_lxd_names_otherwise_is_refused_and_a_missing_image_is_not_sent(
    lxd: Lxd, host_image: tuple[ImageStore, Image]
) -> None:
    _, img = host_image
    lxd.wrong_fingerprint = True
    with pytest.raises(SandboxError, match="not " + "[0-9a-f]" * 8):
        lxdops.lxd_import([img.digest])
    assert lxd.aliases == {}
    with pytest.raises(lxdops.LxdEngineError, match="not in this host's store"):
        lxdops.lxd_import(["sha256:" + "ab" * 32])
    with pytest.raises(AgentUsage):
        lxdops.lxd_import(["sha256:../../etc"])


def test_init_gives_an_uninitialised_lxd_a_pool_and_a_root_disk_once(lxd: Lxd) -> None:
    assert lxdops.status()[2] is False
    done = lxdops.lxd_init([])["done"]
    assert done[:2] == ["storage pool default (dir)", "a root disk in the default profile"]
    assert lxd.profile_devices == {"root": {"type": "disk", "path": "/", "pool": "default"}}
    assert "forwarding = 1" in lxdops.FORWARDING_CONF.read_text()
    assert lxdops.lxd_init([]) == {"done": []}
    items = {i["item"]: i for i in hostcheck.host_check(["lxd"])}
    assert items["lxd"]["ok"] and "LXD 5.0.fake" in items["lxd"]["detail"]
    assert items["lxd storage"]["ok"] and items["lxd storage"]["detail"] == "root disk on pool default"
    assert "lxc" not in items and "subordinate ids" not in items


def test_a_missing_lxd_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lxdops, "LXD_SOCKETS", (str(tmp_path / "none.sock"),))
    with pytest.raises(lxdops.LxdEngineError) as e:
        lxdops.server()
    assert "LXD does not answer" in e.value.message and e.value.hint and "host prepare" in e.value.hint
    items = {i["item"]: i for i in hostcheck.host_check(["lxd"])}
    assert not items["lxd"]["ok"] and items["lxd"]["fix"] and "lxd" in items["lxd"]["fix"]


def test_the_agents_lxd_ops_need_only_pythons_standard_library() -> None:
    """A host has python3 and nothing else: no PyYAML, pydantic, cryptography or pylxd."""
    code = (
        "import sys\n"
        "for m in ('yaml', 'pydantic', 'cryptography', 'pylxd', 'requests', 'docker'):\n"
        "    sys.modules[m] = None\n"
        "import sandbox.hostagent.lxdops, sandbox.hostagent.lxdpublish, sandbox.hostagent.hostcheck\n"
        "import sandbox.imageformats.lxd\n"
    )
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
