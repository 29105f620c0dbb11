"""The scoring service's core (no web framework, no Dagster): request decoding, A/B assignment, dynamic
batching, the models that follow their registry aliases and the prediction log."""
