"""Checkpoints: their format and validated loading, the store, retention, saving, sharded folders."""
