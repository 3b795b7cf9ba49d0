"""Image formats: an image from the store as something another tool or a backend takes.

Below both the backends and `image export`, so neither imports the other:

- unpack.py: the checked layer unpacker (whiteouts, opaque dirs, no path escapes, id shifting).
- tartree.py: a directory tree into a tar, deterministically (the builder's layers use it too).
- rootfs.py: the flattened root filesystem (all layers applied) as a scratch dir or one tar.
- docker.py: a `docker load` archive, one docker layer per sandbox layer.
- lxd.py: a unified LXD image tarball (metadata.yaml, templates/, rootfs/).
- vmdisk.py: raw ext4 disks, qcow2 overlays and the kernel command line of a VM.
- hostfiles.py: the files that give an instance its own name (hostname, hosts).
- tools.py: running a host tool, and the error these formats raise.

This package imports only the store, fsutil, errors, events, workspace and config.
"""
