"""The `raw` group: see assets.py."""
