"""The `augmentation` group: see assets.py."""
