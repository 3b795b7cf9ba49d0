"""Backends run instances of an image: lxc (default, no daemon), later lxd, docker, libvirt."""
