"""Dashboard pages: one module each, one ``render_*`` function each."""
