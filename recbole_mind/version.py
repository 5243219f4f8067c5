"""The package version, stored in every checkpoint and result record the plugin writes."""

__version__ = "0.2.0"
