"""The `features` group: see assets.py."""
