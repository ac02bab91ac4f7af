"""The Ekko image and the pause image, built without Docker (see build.py)."""
