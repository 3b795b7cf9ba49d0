"""The configuration layer: recipe, profile and sandbox.yaml schemas, YAML with line marks, loading
with extends and checks.

Names are imported lazily (PEP 562), so that `sandbox up` loads the profile
machinery without the recipe's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "App": "sandbox.config.recipe",
    "Base": "sandbox.config.recipe",
    "CronJob": "sandbox.config.recipe",
    "Duration": "sandbox.config.units",
    "FileEntry": "sandbox.config.recipe",
    "Health": "sandbox.config.profile",
    "Host": "sandbox.config.profile_hosts",
    "LoadedProfile": "sandbox.config.profile_loader",
    "LoadedRecipe": "sandbox.config.loader",
    "MarkedDict": "sandbox.config.yamlmarks",
    "MarkedList": "sandbox.config.yamlmarks",
    "Mount": "sandbox.config.profile",
    "PortMap": "sandbox.config.profile",
    "Profile": "sandbox.config.profile",
    "Recipe": "sandbox.config.recipe",
    "ResolvedFile": "sandbox.config.loader",
    "Resources": "sandbox.config.profile",
    "Router": "sandbox.config.profile",
    "Size": "sandbox.config.units",
    "TemplateProblem": "sandbox.config.templates",
    "User": "sandbox.config.recipe",
    "did_you_mean": "sandbox.config.validate",
    "env_profile_name": "sandbox.config.names",
    "format_path": "sandbox.config.validate",
    "load_profile": "sandbox.config.profile_loader",
    "load_profile_by_name": "sandbox.config.profile_loader",
    "load_recipe": "sandbox.config.loader",
    "load_yaml": "sandbox.config.yamlmarks",
    "locate": "sandbox.config.yamlmarks",
    "merge": "sandbox.config.loader",
    "parse_duration": "sandbox.config.units",
    "parse_key_file": "sandbox.config.sshkeys",
    "parse_public_key": "sandbox.config.sshkeys",
    "parse_size": "sandbox.config.units",
    "recipe_context": "sandbox.config.templates",
    "render_template": "sandbox.config.templates",
    "validation_issues": "sandbox.config.validate",
}

if TYPE_CHECKING:
    from sandbox.config.loader import LoadedRecipe, ResolvedFile, load_recipe, merge
    from sandbox.config.names import env_profile_name
    from sandbox.config.profile import Health, Mount, PortMap, Profile, Resources, Router
    from sandbox.config.profile_hosts import Host
    from sandbox.config.profile_loader import (
        LoadedProfile,
        load_profile,
        load_profile_by_name,
    )
    from sandbox.config.recipe import App, Base, CronJob, FileEntry, Recipe, User
    from sandbox.config.sshkeys import parse_key_file, parse_public_key
    from sandbox.config.templates import TemplateProblem, recipe_context, render_template
    from sandbox.config.units import Duration, Size, parse_duration, parse_size
    from sandbox.config.validate import did_you_mean, format_path, validation_issues
    from sandbox.config.yamlmarks import MarkedDict, MarkedList, load_yaml, locate


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox.config' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "App",
    "Base",
    "CronJob",
    "Duration",
    "FileEntry",
    "Health",
    "Host",
    "LoadedProfile",
    "LoadedRecipe",
    "MarkedDict",
    "MarkedList",
    "Mount",
    "PortMap",
    "Profile",
    "Recipe",
    "ResolvedFile",
    "Resources",
    "Router",
    "Size",
    "TemplateProblem",
    "User",
    "did_you_mean",
    "env_profile_name",
    "format_path",
    "load_profile",
    "load_profile_by_name",
    "load_recipe",
    "load_yaml",
    "locate",
    "merge",
    "parse_duration",
    "parse_key_file",
    "parse_public_key",
    "parse_size",
    "recipe_context",
    "render_template",
    "validation_issues",
]
