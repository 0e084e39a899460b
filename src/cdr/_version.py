"""The package version, in a module of its own: anything may import it without importing ``cdr`` itself."""

__version__ = "0.1.0"
