"""Ekko: places ML model shards on inference servers and rolls model versions out safely."""

__version__ = "0.1.0.dev0"
