"""One module per nas command."""
