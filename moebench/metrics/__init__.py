"""Metrics, defined once (DESIGN.md, "Metrics, defined once")."""
