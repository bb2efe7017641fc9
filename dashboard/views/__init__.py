"""Dashboard pages: one module each, one ``render_*`` function each.

Not named ``pages/``: Streamlit would treat such a folder as a legacy multipage app.
"""
