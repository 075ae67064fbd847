"""advbench's version, as installed (every result row records it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    ADVBENCH_VERSION = version("advbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    ADVBENCH_VERSION = "0.0.0+source"
