"""How it runs: data pipeline, trial (train/eval), Optuna sweeper plugin, storage, scheduling."""
