"""One module per latbench command."""
