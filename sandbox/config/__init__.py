"""The configuration layer: recipe schema, YAML with line marks, loading with extends and checks."""

from sandbox.config.loader import LoadedRecipe, ResolvedFile, load_recipe, merge
from sandbox.config.profile import Health, Mount, PortMap, Profile, Resources, Router
from sandbox.config.profile_loader import LoadedProfile, env_profile_name, load_profile, load_profile_by_name
from sandbox.config.recipe import App, Base, CronJob, FileEntry, Recipe, User
from sandbox.config.sshkeys import parse_key_file, parse_public_key
from sandbox.config.templates import TemplateProblem, recipe_context, render_template
from sandbox.config.units import Duration, Size, parse_duration, parse_size
from sandbox.config.validate import did_you_mean, format_path, validation_issues
from sandbox.config.yamlmarks import MarkedDict, MarkedList, load_yaml, locate

__all__ = [
    "App",
    "Base",
    "CronJob",
    "Duration",
    "FileEntry",
    "Health",
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
