"""The `scoring` group: see assets.py."""
