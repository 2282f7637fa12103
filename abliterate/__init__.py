"""abliterate: an Optuna search service for abliteration.

The engine's folders sit at the top of the source tree (ablation/, objectives/, search/,
storage/) and install under this one namespace (``abliterate.search`` and so on, mapped by
pyproject's package-dir), so that no generic top-level name reaches a user's environment.
Dependencies point one way: search -> objectives -> ablation, and search -> storage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("abliterate")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
