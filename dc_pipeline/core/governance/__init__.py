"""Governance without Dagster: the audit trail's events from runs, alias moves and review decisions."""
