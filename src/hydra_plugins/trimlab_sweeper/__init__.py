"""trimlab's Hydra sweeper on current optuna (see optuna_sweeper)."""
