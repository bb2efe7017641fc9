"""Streamlit dashboard: reads the capml store (read-only) and draws it; computes no science."""
