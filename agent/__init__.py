"""Passive edge sensor for hospital ward networks."""

__version__ = "0.1.0"
