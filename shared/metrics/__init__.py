"""Metrics computed from a split's outputs."""
