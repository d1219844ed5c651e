"""Small utilities shared by several fields of the library (no book machinery, no models)."""
