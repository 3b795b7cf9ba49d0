"""Environments: a profile's instances of one image on one backend, plus their router.

An env is named PROFILE or PROFILE-SUFFIX. `Envs` (service.py) is the one entry point; its
collaborators each hold one idea (lifecycle, instances, routing, health, snapshots, views, gc,
diff) over one shared context. All bookkeeping lives in the state DB.
"""

from sandbox.envs.context import AppInfo, default_owner
from sandbox.envs.health import HealthTimeout
from sandbox.envs.service import Envs
from sandbox.envs.views import EnvView

__all__ = ["AppInfo", "EnvView", "Envs", "HealthTimeout", "default_owner"]
