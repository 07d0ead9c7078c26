"""Metrics shared by the evaluations (image quality, temporal stability, tracking)."""
