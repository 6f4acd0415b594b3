"""`sfm`: serve, migrate, config. Typer, because commands are typed functions like the rest."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Annotated, Any

import typer

from somafractalmemory.errors import ConfigError, SFMError

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
    threads: Annotated[
        int | None, typer.Option(help="Request threads per worker [threads].")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (needs a Milvus server).")] = 1,
) -> None:
    """Migrate, then serve the API with gunicorn (worker processes x request threads)."""
    from somafractalmemory.conf import get_config

    try:
        conf = get_config()
        if workers > 1 and not (conf.milvus_uri or conf.milvus_host):
            raise ConfigError(
                "--workers > 1 needs a Milvus server: the Milvus Lite file can be opened by one "
                "process only. Use --threads to scale the embedded default, or set milvus_uri."
            )
    except SFMError as exc:
        _fail(exc)
        return
    migrate()
    options: dict[str, Any] = {
        "bind": f"{host or conf.api_host}:{port or conf.api_port}",
        "workers": workers,
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

    try:
        backends.vector_index()
    except SFMError as exc:
        worker.log.error("error [%s]: %s", exc.code, exc.message)
        sys.exit(4)  # gunicorn stops when a worker fails to boot
    _background(threading.Event())


def _background(stop: threading.Event) -> None:
    """The outbox worker and the scheduled jobs, on daemon threads of this process."""
    from somafractalmemory.memories import maintenance, services

    for target, name in (
        (services.run_outbox_worker, "sfm-outbox"),
        (maintenance.run_schedules, "sfm-schedule"),
    ):
        threading.Thread(target=target, args=(stop,), name=name, daemon=True).start()


@app.command()
def worker(
    interval: Annotated[float, typer.Option(help="Seconds between polls when idle.")] = 1.0,
) -> None:
    """Pay owed vector writes (the outbox) until stopped. `sfm serve` runs one in-process."""
    _django()
    from somafractalmemory import backends
    from somafractalmemory.memories import services

    try:
        backends.vector_index()
    except SFMError as exc:
        _fail(exc)
    typer.echo(f"outbox worker running; {services.outbox_depth()} writes owed", err=True)
    stop = threading.Event()
    from somafractalmemory.memories import maintenance

    threading.Thread(
        target=maintenance.run_schedules, args=(stop,), name="sfm-schedule", daemon=True
    ).start()
    try:
        services.run_outbox_worker(stop, interval=interval)
    except KeyboardInterrupt:
        stop.set()


def _progress(label: str = "") -> Any:
    """A progress callback `(done, total, stage="")` printing at most once a second."""
    started = time.monotonic()
    last: dict[str, Any] = {"at": 0.0, "stage": None}

    def report(done: int, total: int, stage: str = "") -> None:
        now = time.monotonic()
        if now - last["at"] >= 1.0 or done == total or stage != last["stage"]:
            last.update(at=now, stage=stage)
            rate = done / max(now - started, 1e-9)
            what = ": ".join(p for p in (label, stage) if p)
            typer.echo(f"{what}: {done}/{total} ({rate:.0f}/s, {now - started:.1f} s)", err=True)

    return report


@app.command()
def reindex(
    drop: Annotated[bool, typer.Option(help="Start from an empty collection.")] = False,
    pending: Annotated[bool, typer.Option(help="Only pay owed writes (the outbox).")] = False,
) -> None:
    """Rebuild the vector index from SQL (also after changing the embedding model)."""
    _django()
    from somafractalmemory.memories import maintenance, services

    try:
        if pending:
            paid = services.drain_outbox(limit=1_000_000, due_only=False)
            owed = services.outbox_depth()
            typer.echo(f"paid {paid} owed writes; {owed} still owed")
            if owed:
                raise typer.Exit(1)
            return
        report = maintenance.reindex(drop=drop, progress=_progress("reindex"))
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"indexed {report.indexed} memories, removed {report.removed} orphaned vectors")


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option(help="Make the index match SQL.")] = False,
) -> None:
    """Report drift between SQL and the vector index. Exit 1 when drift remains."""
    _django()
    from somafractalmemory.memories import maintenance

    try:
        drift = maintenance.doctor(repair=repair, progress=_progress("repair"))
        for kind in ("missing", "orphaned", "stale"):
            ids = getattr(drift, kind)
            typer.echo(f"{kind}: {len(ids)}" + (f" (e.g. {', '.join(ids[:5])})" if ids else ""))
        if repair and not drift.clean:
            drift = maintenance.doctor()  # check the repair
            typer.echo("repaired" if drift.clean else "drift remains after repair")
    except SFMError as exc:
        _fail(exc)
        return
    if drift.clean:
        typer.echo("index matches SQL")
    else:
        raise typer.Exit(1)


@app.command()
def consolidate(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all", help="Every namespace with new episodes.")
    ] = False,
) -> None:
    """Fold episodes into semantic memories and summaries (idempotent, incremental)."""
    _django()
    from somafractalmemory.conf import get_config
    from somafractalmemory.memories import hierarchy
    from somafractalmemory.memories.models import DEFAULT_TENANT

    try:
        if all_namespaces:
            targets = hierarchy.namespaces_to_consolidate()
        else:
            targets = [(DEFAULT_TENANT, n) for n in namespace or [get_config().namespace]]
        for tenant, name in targets:
            done = hierarchy.consolidate(name, tenant=tenant, report=_progress())
            typer.echo(json.dumps({"tenant": tenant, **done.as_dict()}))
    except SFMError as exc:
        _fail(exc)


@app.command()
def forget(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count, change nothing.")] = False,
) -> None:
    """Archive faded, unimportant memories (restorable; see forget_threshold/forget_floor)."""
    _django()
    from somafractalmemory.memories import forgetting
    from somafractalmemory.memories.models import Tenant

    try:
        for tenant in Tenant.objects.values_list("id", flat=True):
            done = forgetting.forget(
                tenant=tenant, namespace=namespace, dry_run=dry_run, report=_progress()
            )
            typer.echo(json.dumps({"tenant": tenant, **done.as_dict()}))
    except SFMError as exc:
        _fail(exc)


@app.command("milvus-lite")
def milvus_lite(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 19530,
) -> None:
    """Serve the embedded Milvus Lite file over gRPC, so that several `sfm serve` workers
    on this machine can share it (set milvus_uri=http://HOST:PORT for them). For one
    machine: production runs Milvus standalone or a cluster."""
    from somafractalmemory import backends
    from somafractalmemory.conf import get_config

    try:
        served = backends.serve_lite_file(get_config(), host, port)
    except SFMError as exc:
        _fail(exc)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"Milvus Lite serving {get_config().effective_milvus_uri} at {served.uri}", err=True)
    while not stop.wait(1.0):
        if not served.running():
            typer.echo("error [vector_index_unavailable]: the Milvus Lite engine exited", err=True)
            served.stop()
            raise typer.Exit(1)
    served.stop()


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
