"""Automation: sensors and schedules (no assets)."""
