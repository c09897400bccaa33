"""Serving a finished run: `trimlab-serve` (LitServe) and `trimlab-loadtest` (its cost per million predictions)."""
