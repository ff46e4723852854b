"""KREE, the Kepler Remote Execution Engine."""

__version__ = "0.1.0"
