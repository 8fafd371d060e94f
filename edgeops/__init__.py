"""edgeops: take a trained model to a fleet of edge devices.

Importing this package loads no framework (torch, tensorflow, scikit-learn).
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
