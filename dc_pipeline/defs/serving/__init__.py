"""The scoring service's data: its prediction log taken into the warehouse, and the A/B report."""
