"""Run configuration: the TOML schema (schema.py), loading and its errors (loading.py)."""
