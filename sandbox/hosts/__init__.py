"""Production hosts: the SSH transport, placement of instances on hosts, shipping images by digest,
and the host agent bundle (sandbox's own code, run as a short command on a host; nothing stays
running there between commands)."""
