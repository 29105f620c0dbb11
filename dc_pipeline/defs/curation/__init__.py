"""The `curation` group: see assets.py."""
