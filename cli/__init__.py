"""The `numrnn` command line (installed as the package numrnn_cli)."""
