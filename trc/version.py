"""The version of TRC (recorded in data sets and model files)."""

__version__ = "0.1.0"
