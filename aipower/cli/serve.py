"""`aipower serve`: migrate the database, say what is configured, run the gateway with uvicorn."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import click
import uvicorn
from starlette.applications import Starlette

from aipower import settings as settings_module
from aipower.app import build_deployments, create_app, tune_collector
from aipower.cli.http_protocol import HeadWithBodyProtocol
from aipower.cli.params import catalog_option
from aipower.settings import Settings
from aipower.storage import db, ledger_owners


@click.command()
@click.option("--host", default=None, help="Interface to listen on [default: 127.0.0.1, AIPOWER_HOST].")
@click.option("--port", type=int, default=None, help="Port [default: 8000, AIPOWER_PORT].")
@click.option("--workers", type=int, default=None, help="Worker processes [default: 1, AIPOWER_WORKERS].")
@catalog_option
def serve(host: str | None, port: int | None, workers: int | None, catalog_paths: tuple[Path, ...]) -> None:
    """Start the gateway (creates and migrates the database on first start)."""
    settings = settings_module.from_environ().with_overrides(
        host=host, port=port, workers=workers, catalog_paths=catalog_paths or None
    )
    if settings.workers > 1 and not settings.redis_url:
        raise click.ClickException(
            f"--workers {settings.workers} needs AIPOWER_REDIS_URL: with in-process counters every worker would "
            f"enforce its own rate limits, multiplying them by {settings.workers}. Start Redis and set "
            "AIPOWER_REDIS_URL=redis://127.0.0.1:6379/0, or run one worker per process behind a balancer."
        )
    if settings.stale_hold_seconds < 0 or not settings.hold_beat_seconds > 0:
        raise click.ClickException(
            f"AIPOWER_STALE_HOLD_SECONDS={settings.stale_hold_seconds}, AIPOWER_HOLD_BEAT_SECONDS="
            f"{settings.hold_beat_seconds}: give 0 or more seconds for the first and more than 0 for the second"
        )
    protocol = _protocol(settings)
    _migrate(settings)
    released = asyncio.run(_release_stale_holds(settings))
    _announce(settings)
    if released:
        click.echo(f"released {released} hold(s) abandoned by a stopped process (not charged)")
    if settings.workers > 1:
        settings_module.export(settings)
        app: str | Starlette = "aipower.app:create_app_from_environ"
    else:
        app = create_app(settings)
        tune_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        factory=settings.workers > 1,
        log_level=settings.log_level,
        loop="uvloop",
        http=protocol,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For is read by aipower itself, only behind AIPOWER_TRUSTED_PROXIES
    )


def _protocol(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with head and body in one send; with AIPOWER_HTTP2, h2c as well."""
    if not settings.http2:
        return HeadWithBodyProtocol
    try:
        from aipower.cli.h2c_protocol import Http1OrH2c  # zttp, an optional dependency
    except ImportError as exc:
        raise click.ClickException(f"AIPOWER_HTTP2=1 needs the http2 extra: pip install -e '.[http2]' ({exc})") from exc
    return Http1OrH2c


def _migrate(settings: Settings) -> None:
    """`aipower db upgrade` in a child process: the server itself never imports Alembic (~11 MiB of RSS)."""
    argv = [sys.executable, "-m", "aipower", "db", "upgrade"]
    env = {**os.environ, "AIPOWER_DATABASE_URL": settings.database_url}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"could not migrate {db.describe(settings.database_url)}:\n{done.stderr.strip()}")


async def _release_stale_holds(settings: Settings) -> int:
    """Holds of processes that stopped (storage.ledger_owners): released, no charge. A live process's, never."""
    engine = db.make_engine(settings.database_url)
    try:
        return await ledger_owners.sweep(engine, settings.stale_hold_seconds)
    finally:
        await engine.dispose()


def _announce(settings: Settings) -> None:
    deployments = build_deployments(settings)
    catalog = deployments.catalog
    ready = sorted({t.provider.id for t in deployments.targets.values()})
    missing = [p for pid, p in catalog.providers.items() if pid not in ready]
    protocols = "HTTP/1.1 and HTTP/2 cleartext (h2c)" if settings.http2 else "HTTP/1.1"
    click.echo(
        f"aipower listening on http://{settings.host}:{settings.port}/v1 ({settings.workers} worker(s), {protocols})"
    )
    click.echo(f"database: {db.describe(settings.database_url)}")
    limits = "in-process"
    if settings.redis_url:
        from aipower.storage import redis_limits  # only then: redis is ~6 MiB a server without it does not need

        limits = f"Redis {redis_limits.describe(settings.redis_url)}"
    click.echo(f"rate limits: {limits}; demo key: {'on' if settings.demo_key else 'off'}")
    click.echo(f"providers with keys: {', '.join(ready) or 'none'}")
    for p in missing:
        click.echo(f"  {p.id}: set {' or '.join(p.key_env)} to enable")
    click.echo("make an API key: aipower users create you@example.com && aipower keys create you@example.com")
