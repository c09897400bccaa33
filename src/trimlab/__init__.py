"""trimlab: train classifiers, make them cheaper, and prove it with numbers."""

__version__ = "0.1.0"
