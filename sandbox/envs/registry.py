"""The backends of a workspace: one context (runtime dir, network, images, sink) and their registry.

The env layer makes this once and asks it for backends by name. Backends see only the
context; the VM flavour of an image (a build) reaches the libvirt backend as a function,
so the backends never import the builder.
"""

from __future__ import annotations

from sandbox.backends.base import BackendContext, BackendRegistry, ImageAccess
from sandbox.events import EventSink
from sandbox.settings import Settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


def make_backend_registry(
    ws: Workspace, settings: Settings, sink: EventSink, store: ImageStore | None = None
) -> BackendRegistry:
    """The registry of the built-in backends, all made with this workspace's context."""

    def derive_vm(digest: str, sink: EventSink) -> str:
        from sandbox.build.vmflavour import vm_flavour  # the builder: only when a VM image is needed

        return vm_flavour(ws, digest, sink)

    ctx = BackendContext(
        workspace_id=ws.id,
        runtime=ws.runtime,
        tmp=ws.tmp,
        network=settings.network,
        images=ImageAccess(store or ImageStore(ws.images), derive_vm),
        sink=sink,
    )
    return BackendRegistry(ctx)
