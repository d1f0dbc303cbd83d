"""`python -m aipower` runs the operator CLI."""

from aipower.cli import main

main()
