"""sandbox: recipes to reproducible images, staging clones and gentle promotion."""

__version__ = "0.1.0"
