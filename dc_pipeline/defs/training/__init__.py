"""The `training` group: see assets.py."""
