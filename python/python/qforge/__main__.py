"""`python -m qforge ...` is the `qforge` command."""

from ._cli import main

main()
