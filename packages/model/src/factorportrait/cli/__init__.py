"""Console scripts: thin wrappers over library functions."""
