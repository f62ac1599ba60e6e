"""python -m tidegate → the CLI."""

from tidegate.cli import main

main()
