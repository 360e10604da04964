"""The `charter` command line."""
