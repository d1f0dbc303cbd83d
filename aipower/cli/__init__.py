"""The operator CLI (click): serve, users, keys, models, db. Calls storage and gateway directly, never over HTTP."""

from __future__ import annotations

import click

from aipower import __version__
from aipower.cli.billing import balance, cap, credits, ledger
from aipower.cli.db import db
from aipower.cli.keys import keys
from aipower.cli.models import models
from aipower.cli.serve import serve
from aipower.cli.users import users


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aipower")
def cli() -> None:
    """aipower: a self-hostable OpenAI-compatible LLM API gateway."""


cli.add_command(serve)
cli.add_command(users)
cli.add_command(keys)
cli.add_command(models)
cli.add_command(db)
cli.add_command(credits)
cli.add_command(balance)
cli.add_command(cap)
cli.add_command(ledger)


def main() -> None:
    cli()
