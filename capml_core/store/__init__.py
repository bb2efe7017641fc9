"""The DuckDB store: schema and migrations, records, writer, queries, user SQL."""
