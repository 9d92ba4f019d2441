"""`python -m edgeiad` runs the CLI."""

from .cli import main

main()
