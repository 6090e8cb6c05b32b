"""kimi-local: Kimi-K2 on one workstation."""

__version__ = "0.1.0"
