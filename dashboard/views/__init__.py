"""Dashboard pages (not named pages/: Streamlit would treat that folder as a legacy multipage app): one module each, one ``render_*`` function each."""
