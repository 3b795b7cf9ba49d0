"""The configuration layer: recipe schema, YAML with line marks, loading with extends and checks."""

from sandbox.config.loader import LoadedRecipe, ResolvedFile, load_recipe, merge
from sandbox.config.recipe import App, Base, CronJob, FileEntry, Recipe, User
from sandbox.config.sshkeys import parse_key_file, parse_public_key
from sandbox.config.templates import TemplateProblem, recipe_context, render_template
from sandbox.config.validate import did_you_mean, format_path, validation_issues
from sandbox.config.yamlmarks import MarkedDict, MarkedList, load_yaml, locate

__all__ = [
    "App",
    "Base",
    "CronJob",
    "FileEntry",
    "LoadedRecipe",
    "MarkedDict",
    "MarkedList",
    "Recipe",
    "ResolvedFile",
    "TemplateProblem",
    "User",
    "did_you_mean",
    "format_path",
    "load_recipe",
    "load_yaml",
    "locate",
    "merge",
    "parse_key_file",
    "parse_public_key",
    "recipe_context",
    "render_template",
    "validation_issues",
]
