"""`python -m meshnode ...` is the `meshnode` command (the demo starts its daemons this way)."""

from .cli import main

main(prog_name="meshnode")
