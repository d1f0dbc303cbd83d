"""`aipower models`: the catalog as a table."""

from __future__ import annotations

from pathlib import Path

import click

from aipower.cli.params import catalog_option, load_catalog
from aipower.gateway.deployments import provider_key
from aipower.money import format_usd
from aipower.settings import from_environ


@click.command()
@catalog_option
def models(catalog_paths: tuple[Path, ...]) -> None:
    """Print the model catalog: ids, names, prices (USD per 1M tokens), context, free tier, provider key."""
    settings = from_environ()
    catalog = load_catalog(catalog_paths)
    click.echo(f"{'MODEL':<28} {'NAME':<18} {'INPUT':>7} {'OUTPUT':>7} {'CONTEXT':>9} {'FREE':<5} KEY")
    for m in catalog.models.values():
        keyed = "yes" if provider_key(catalog.providers[m.provider], settings.provider_env) else "-"
        free = "yes" if m.free else "-"
        click.echo(
            f"{m.id:<28} {m.name:<18} {format_usd(m.price.input):>7} {format_usd(m.price.output):>7} "
            f"{m.context:>9} {free:<5} {keyed}"
        )
    for r in catalog.routes.values():
        click.echo(f"{r.id:<28} {'(smart route)':<18} {r.strategy}: {', '.join(r.candidates)}")
