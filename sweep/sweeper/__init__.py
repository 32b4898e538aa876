"""coordsweep's Optuna sweeper for Hydra (``python run.py -m``).

Hydra finds it through the shim ``hydra_plugins/coordsweep_sweeper``; everything lives here:
``config`` (schema), ``plugin`` (the Sweeper class), ``params`` (override syntax -> Optuna
distributions, free functions), ``samplers``, ``worker`` (the ask-run-tell loop of one worker),
``local_pool`` (worker processes when the launcher is Hydra's basic one), ``impl`` (the sweep).
Importing this package is cheap: optuna and torch are imported only when a sweep starts.
"""
