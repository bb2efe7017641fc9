"""Prefect flows and the ``capml`` command line: thin wrappers around capml_core."""
