"""Pipeline stages: the only place that joins store, config and science."""
