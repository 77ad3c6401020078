"""`numrnn`: the click application. Thin: it builds configs and calls the library."""
import click

import numrnn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(numrnn.__version__, prog_name="numrnn")
def main():
    """numrnn: recurrent neural networks on the CPU with Numba kernels and hand-derived BPTT."""


if __name__ == "__main__":
    main()
