"""``cardvault serve | local``: the HTTP service, and the private PostgreSQL cluster it uses by default.

Domain modules are imported inside the commands that use them: ``cardvault --help`` (and every other
command) starts without loading alembic, litestar and the rest.
"""

from __future__ import annotations

import click

from controlplane.cli.common import load_settings


@click.command()
@click.option("--host", help="Listen address (default CARDVAULT_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default CARDVAULT_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP service against CARDVAULT_DATABASE_URL (migrating the registry first)."""
    import gc

    import uvicorn

    from controlplane.app import create_app

    settings = load_settings(create_secrets=True)
    app = create_app(settings)
    proxies = settings.http.trusted_proxies
    # Everything loaded so far (modules, the application and its routes: some 200,000 objects) lives as
    # long as the process. Frozen, the cyclic collector stops walking it: under tenant pool churn (each
    # miss leaves a pool, a connection and tasks in reference cycles) collections took 13% of the process's
    # CPU, 6% once frozen (perf, README "Routing"). Only here, not in create_app: a test process builds
    # many apps, whose garbage a freeze would keep forever.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host or settings.http.host,
        port=port or settings.http.port,
        log_level=settings.log_level.lower(),
        # X-Forwarded-For only from CARDVAULT_TRUSTED_PROXIES: never uvicorn's default (FORWARDED_ALLOW_IPS,
        # else 127.0.0.1), which would let any local process choose the address the throttle sees.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies),
        server_header=False,  # no "server: uvicorn": what runs here is nobody else's business
        # uvicorn writes its access lines at INFO, building each (quoted path, client address) before the
        # logger drops it: above INFO that is work for nothing on every request.
        access_log=settings.log_level.upper() in ("TRACE", "DEBUG", "INFO"),
    )


@click.group()
def local() -> None:
    """The private PostgreSQL cluster under CARDVAULT_DATA_DIR (used when no database URL is set)."""


@local.command("start")
def local_start() -> None:
    """Start (or reuse) the local cluster; prints the control database DSN."""
    from controlplane.localpg import start_local

    settings = load_settings()
    click.echo(start_local(settings.data_dir))


@local.command("stop")
def local_stop() -> None:
    """Stop the local cluster."""
    from controlplane.localpg import LocalCluster

    LocalCluster(load_settings().data_dir / "postgres").stop()
