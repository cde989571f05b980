"""The package version: its one source (setup.cfg reads it with `attr:`; `lrm-mup --version` prints it)."""
__version__ = "0.2.0.dev0"
