"""The `clean` group: see assets.py."""
