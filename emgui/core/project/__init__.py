"""The project: its folder and SQLite store, the schema and its migrations, recent projects, full-text search."""
