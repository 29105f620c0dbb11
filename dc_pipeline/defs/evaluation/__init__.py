"""The `evaluation` group: see assets.py."""
