"""Aggregated comparison tables (and, later, statistics and the report)."""
