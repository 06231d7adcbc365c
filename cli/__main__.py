"""`python -m cli` runs the `qgjob` command."""

from cli.main import main

main()
