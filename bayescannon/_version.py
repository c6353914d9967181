"""The installed version of bayescannon (from the package metadata)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bayescannon")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
