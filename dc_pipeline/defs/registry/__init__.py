"""The `registry` group: see assets.py."""
