"""One module per CLI command; each registers itself on `ofa.cli.app`."""
