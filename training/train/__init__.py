"""Training entry points and their losses."""
