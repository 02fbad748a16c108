"""The package version (its own module, so that importing it never runs anything else)."""

__version__ = "0.1.0"
