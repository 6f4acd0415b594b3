"""`sfm`: serve, migrate, config. Typer, because commands are typed functions like the rest."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from somafractalmemory.errors import SFMError

app = typer.Typer(help="SomaFractalMemory: long-term memory for AI agents.", no_args_is_help=True)


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "somafractalmemory.server.settings")
    import django

    django.setup()


def _fail(error: SFMError) -> None:
    typer.echo(f"error [{error.code}]: {error.message}", err=True)
    raise typer.Exit(2)


@app.command()
def migrate() -> None:
    """Create or update the SQL schema."""
    _django()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=1)


@app.command()
def config(
    markdown: Annotated[bool, typer.Option(help="Print the settings reference instead.")] = False,
) -> None:
    """Print the effective settings (secrets masked) as JSON."""
    from somafractalmemory.conf import get_config, settings_reference

    try:
        if markdown:
            typer.echo(settings_reference(), nl=False)
            return
        typer.echo(json.dumps(get_config().masked(), indent=2))
    except SFMError as exc:
        _fail(exc)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [api_host].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [api_port].")] = None,
    threads: Annotated[int | None, typer.Option(help="Request threads [threads].")] = None,
) -> None:
    """Migrate, then serve the API (gunicorn, one process owning the vector index, threads)."""
    from somafractalmemory.conf import get_config

    try:
        conf = get_config()
    except SFMError as exc:
        _fail(exc)
        return
    migrate()
    options: dict[str, Any] = {
        "bind": f"{host or conf.api_host}:{port or conf.api_port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads or conf.threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "accesslog": "-",
        "errorlog": "-",
        "post_worker_init": _warm_up,
        "control_socket_disable": True,
    }
    _Server(options).run()


def _warm_up(worker: Any) -> None:
    """Load the model and open the index before the first request, in the worker process."""
    from somafractalmemory import backends
    from somafractalmemory.memories import services

    try:
        backends.vector_index()
        paid = services.drain_outbox()
        if paid:
            worker.log.info("paid %d owed vector writes", paid)
    except SFMError as exc:
        worker.log.error("error [%s]: %s", exc.code, exc.message)
        sys.exit(4)  # gunicorn stops when a worker fails to boot


class _Server:
    def __init__(self, options: dict[str, Any]) -> None:
        from gunicorn.app.base import BaseApplication

        class Application(BaseApplication):
            def load_config(self) -> None:
                for key, value in options.items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                from somafractalmemory.server.wsgi import application

                return application

        self._app = Application()

    def run(self) -> None:
        self._app.run()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
