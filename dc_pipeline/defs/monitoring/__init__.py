"""The `monitoring` group: see assets.py."""
