"""Hydra discovers and instantiates plugins only under ``hydra_plugins``: this module names the
sweeper there and registers its schema (``hydra/sweeper/base_coordsweep``). Nothing else."""
from sweep.sweeper import config as _config
from sweep.sweeper import plugin as _plugin


class CoordSweeper(_plugin.CoordSweeper):
    """``sweep.sweeper.plugin.CoordSweeper`` under the name Hydra accepts."""


_config.register_configs()
