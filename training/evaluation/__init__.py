"""Evaluation and benchmark entry points, each printing a table and writing JSON."""
