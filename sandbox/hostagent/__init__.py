"""The host agent: sandbox's own code run on a production host as one short command per request
(`python3 AGENT.pyz OP ...`), never a daemon. The control side ships it by digest
(sandbox/hosts/agent.py) and calls it over SSH (sandbox/backends/remote.py, sandbox/hosts/ship.py).
"""
