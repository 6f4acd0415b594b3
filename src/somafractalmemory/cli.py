"""`sfm`: serve, migrate, config. Typer, because commands are typed functions like the rest."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer

from somafractalmemory.client import DEFAULT_URL, parse_time
from somafractalmemory.errors import ConfigError, SFMError, ValidationFailed

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
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback address without required API keys.")
    ] = False,
) -> None:
    """Migrate, then serve the API with gunicorn (worker processes x request threads)."""
    from somafractalmemory.conf import get_config

    try:
        conf = get_config()
        if workers > 1 and not conf.milvus_server:
            raise ConfigError(
                "--workers > 1 needs a Milvus server: the embedded vector index is owned by one "
                "process. Use --threads to scale the embedded default, or set milvus_uri."
            )
        bind = host or conf.api_host
        if conf.auth != "required" and not insecure and not _loopback(bind):
            raise ConfigError(
                f"refusing to serve {bind} without API keys: set auth=required "
                "(SFM_AUTH=required) and create keys with `sfm key create`, or pass --insecure"
            )
    except SFMError as exc:
        _fail(exc)
        return
    migrate()
    try:
        from somafractalmemory.memories import services

        services.check_model()
    except SFMError as exc:
        _fail(exc)
        return
    options: dict[str, Any] = {
        "bind": f"{bind}:{port or conf.api_port}",
        "workers": workers,
        "worker_class": "somafractalmemory.server.worker.JsonErrorWorker",
        "threads": threads or conf.threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "accesslog": "-",
        "errorlog": "-",
        "post_worker_init": _warm_up,
        "control_socket_disable": True,
    }
    _Server(options).run()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warm_up(worker: Any) -> None:
    """Load the model and open the index before the first request, in the worker process."""
    from somafractalmemory import backends
    from somafractalmemory.conf import get_config
    from somafractalmemory.errors import IndexLocked, IndexUnavailable

    # Opening a large Milvus Lite file loads all of it (minutes at a million memories):
    # keep telling the arbiter this worker is alive, or it kills it after `timeout`.
    opened = threading.Event()

    def alive() -> None:
        while not opened.wait(5.0):
            worker.notify()

    threading.Thread(target=alive, name="sfm-warm-up", daemon=True).start()
    try:
        backends.vector_index()
    except IndexUnavailable as exc:
        if isinstance(exc, IndexLocked) or not get_config().milvus_server:  # embedded: fatal
            worker.log.error("error [%s]: %s", exc.code, exc.message)
            sys.exit(4)  # gunicorn stops when a worker fails to boot
        # A Milvus server that does not answer yet: serve anyway (stores are owed to the
        # outbox, searches answer from SQL full text) and connect on a later request.
        worker.log.warning(
            "serving without the vector index for now [%s]: %s", exc.code, exc.message
        )
    except SFMError as exc:
        worker.log.error("error [%s]: %s", exc.code, exc.message)
        sys.exit(4)  # gunicorn stops when a worker fails to boot
    finally:
        opened.set()
    _background(threading.Event())


def _background(stop: threading.Event) -> None:
    """The outbox worker and the scheduled jobs, on daemon threads of this process."""
    from somafractalmemory.memories.jobs import maintenance

    for target, name in (
        (maintenance.run_outbox_worker, "sfm-outbox"),
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
    from somafractalmemory.memories.jobs import maintenance

    try:
        backends.vector_index()
    except SFMError as exc:
        _fail(exc)
    typer.echo(f"outbox worker running; {services.outbox_depth()} writes owed", err=True)
    stop = threading.Event()

    threading.Thread(
        target=maintenance.run_schedules, args=(stop,), name="sfm-schedule", daemon=True
    ).start()
    try:
        maintenance.run_outbox_worker(stop, interval=interval)
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
    reembed: Annotated[
        bool, typer.Option(help="Embed every memory with a newly configured embedding_model.")
    ] = False,
) -> None:
    """Rebuild the vector index from SQL (with --reembed after changing the embedding model)."""
    _django()
    from somafractalmemory.memories import services

    try:
        if pending:
            paid = services.drain_outbox(limit=1_000_000, due_only=False)
            owed = services.outbox_depth()
            typer.echo(f"paid {paid} owed writes; {owed} still owed")
            if owed:
                raise typer.Exit(1)
            return
        report = services.reindex(drop=drop, reembed=reembed, progress=_progress("reindex"))
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"indexed {report.indexed} memories, removed {report.removed} orphaned vectors")


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option(help="Make the index match SQL.")] = False,
) -> None:
    """Finish interrupted erasures; report drift between SQL and the vector index. Exit 1
    when drift remains."""
    _django()
    from somafractalmemory import backends
    from somafractalmemory.memories import services
    from somafractalmemory.memories.jobs import erasure

    try:
        backends.vector_index()  # first: a locked index is the answer to everything else
        for job in erasure.interrupted():
            done = erasure.resume(job, progress=_progress(f"resuming purge {job.id}"))
            typer.echo(f"finished interrupted purge {job.id}: {json.dumps(done.as_dict())}")
        drift = services.doctor(repair=repair, progress=_progress("repair"))
        for kind in ("missing", "orphaned", "stale"):
            ids = getattr(drift, kind)
            typer.echo(f"{kind}: {len(ids)}" + (f" (e.g. {', '.join(ids[:5])})" if ids else ""))
        for kind in ("dead", "failed"):  # dead-lettered writes; writes the repair could not do
            why = getattr(drift, kind)
            typer.echo(f"{kind}: {len(why)}")
            for memory_id, error in list(why.items())[:5]:
                typer.echo(f"  {memory_id}: {error}")
        if repair and not drift.clean:
            drift = services.doctor()  # check the repair
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
    from somafractalmemory.memories.jobs import consolidation
    from somafractalmemory.memories.models import DEFAULT_TENANT

    try:
        if all_namespaces:
            targets = consolidation.namespaces_to_consolidate()
        else:
            targets = [(DEFAULT_TENANT, n) for n in namespace or [get_config().namespace]]
        for tenant, name in targets:
            done = consolidation.consolidate(name, tenant=tenant, report=_progress())
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
    from somafractalmemory.memories import services, tenancy

    try:
        for tenant in [t.id for t in tenancy.list_tenants()]:
            done = services.archive_faded(
                tenant=tenant, namespace=namespace, dry_run=dry_run, report=_progress()
            )
            typer.echo(json.dumps({"tenant": tenant, **done.as_dict()}))
    except SFMError as exc:
        _fail(exc)


@app.command()
def purge(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    filters: Annotated[
        str | None,
        typer.Option(
            "--filter", help='Which memories (JSON, as in search): \'{"user_id": "u1"}\'.'
        ),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="No filter: the whole namespace (or every one).")
    ] = False,
    tenant: Annotated[str, typer.Option(help="Whose memories.")] = "default",
    dry_run: Annotated[bool, typer.Option(help="Count what would go, erase nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    export: Annotated[
        str | None, typer.Option(help="First write what will go to this JSONL file.")
    ] = None,
) -> None:
    """Erase memories and every trace of them: rows, vectors, links, the text of parents
    that summarized them, cached queries. Exit 0 done, 1 declined, 2 refused."""
    _django()
    from somafractalmemory.memories import services

    try:
        try:
            spec = json.loads(filters) if filters else None
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"--filter is not JSON: {exc}") from exc
        args: dict[str, Any] = {"tenant": tenant, "namespace": namespace, "spec": spec}
        plan = services.purge(**args, everything=everything, dry_run=True)
        typer.echo(json.dumps(plan.as_dict()))
        if dry_run or not plan.memories:
            return
        if not yes:
            where = ", ".join(plan.namespaces)
            typer.confirm(
                f"Erase {plan.memories} memories of tenant {tenant!r} ({where})? "
                "This cannot be undone.",
                abort=True,
            )

        def write(ids: list[str]) -> None:
            if export:
                with open(export, "w", encoding="utf-8") as stream:
                    written = services.export(ids, stream)
                typer.echo(f"exported {written} memories to {export}", err=True)

        done = services.purge(
            **args, everything=everything, actor="cli", progress=_progress("purge"), before=write
        )
        typer.echo(json.dumps(done.as_dict()))
    except SFMError as exc:
        _fail(exc)


# -- memories through the running service (the Python SDK) ---------------------------------

Url = Annotated[
    str, typer.Option("--url", envvar="SFM_URL", help="The service [http://127.0.0.1:10101].")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="SFM_API_KEY", help="API key, when auth is on.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
NOT_FOUND, REFUSED, UNAVAILABLE = 1, 2, 3  # exit codes of the service commands


@contextlib.contextmanager
def _service(url: str, api_key: str | None) -> Iterator[Any]:
    """The SDK's client; its errors become an `error [code]: message` line and an exit code:
    1 not found, 2 refused (bad input, auth, quota), 3 unreachable or failing."""
    from somafractalmemory import client

    try:
        with client.Memory(url, api_key) as memory:
            yield memory
    except client.NotFound as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        raise typer.Exit(NOT_FOUND) from None
    except client.ApiError as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        raise typer.Exit(UNAVAILABLE if exc.status >= 500 else REFUSED) from None
    except client.TransportError as exc:
        typer.echo(f"error [service_unreachable]: {exc} (is `sfm serve` running?)", err=True)
        raise typer.Exit(UNAVAILABLE) from None


def _json_option(text: str | None, name: str) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        typer.echo(f"error [malformed_json]: {name} is not JSON: {exc}", err=True)
        raise typer.Exit(REFUSED) from None


def _moment(text: str | None, name: str) -> datetime | None:
    try:
        return parse_time(text)
    except ValueError:
        typer.echo(f"error [validation_error]: {name} is not an ISO 8601 time", err=True)
        raise typer.Exit(REFUSED) from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(dataclasses.asdict(value), default=str, ensure_ascii=False))


@app.command()
def store(
    content: str,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace [default].")] = None,
    type: Annotated[str | None, typer.Option(help="episodic, semantic or summary.")] = None,
    importance: Annotated[float | None, typer.Option(help="0 to 1 [0.5].")] = None,
    metadata: Annotated[str | None, typer.Option(help='JSON object: \'{"user": "u1"}\'.')] = None,
    key: Annotated[
        str | None, typer.Option(help="The fact's key: the memory is its next version.")
    ] = None,
    supersedes: Annotated[
        list[str] | None, typer.Option(help="Id of a memory this one replaces (repeatable).")
    ] = None,
    valid_from: Annotated[str | None, typer.Option(help="Valid from (ISO 8601).")] = None,
    ttl: Annotated[int | None, typer.Option(help="Expires this many seconds from now.")] = None,
    as_json: AsJson = False,
) -> None:
    """Store a memory through the running service; prints its id (and what it superseded)."""
    meta = _json_option(metadata, "--metadata")
    with _service(url, api_key) as memory:
        stored = memory.remember(
            content,
            namespace=namespace,
            type=type,
            importance=importance,
            metadata=meta,
            key=key,
            supersedes=supersedes,
            valid_from=_moment(valid_from, "--valid-from"),
            ttl_seconds=ttl,
        )
    if as_json:
        _print_json(stored)
        return
    typer.echo(stored.id + ("  (already stored)" if stored.deduplicated else ""))
    for old in stored.supersedes:
        typer.echo(f"supersedes {old}", err=True)
    for other in stored.possible_conflicts:
        typer.echo(f"possible conflict: {other['id']} ({other['score']:.2f})", err=True)


@app.command()
def search(
    query: str,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many.")] = 10,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    filters: Annotated[str | None, typer.Option("--filter", help="Metadata filter (JSON).")] = None,
    mode: Annotated[str | None, typer.Option(help="hybrid, vector or lexical.")] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Among memories valid at this instant (ISO 8601).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Search through the running service: a table of score, id, type and content."""
    spec = _json_option(filters, "--filter")
    when = _moment(as_of, "--as-of")
    with _service(url, api_key) as memory:
        found = memory.recall(
            query, top_k=top_k, namespace=namespace, filters=spec, mode=mode, as_of=when
        )
    if as_json:
        answer = {
            "memories": [dataclasses.asdict(h) for h in found.hits],
            "latency_ms": found.latency_ms,
            "mode": found.mode,
            "warnings": found.warnings,
        }
        typer.echo(json.dumps(answer, default=str, ensure_ascii=False))
        return
    width = shutil.get_terminal_size((100, 20)).columns
    typer.echo(f"{'score':>6}  {'id':<24}  {'type':<8}  content")
    for hit in found:
        text = " ".join(hit.content.split())
        room = max(20, width - 44)
        text = text if len(text) <= room else text[: room - 1] + "…"
        typer.echo(f"{hit.score:6.3f}  {hit.id:<24}  {hit.type:<8}  {text}")
    typer.echo(f"{len(found)} memories, {found.latency_ms:.1f} ms ({found.mode})", err=True)
    for warning in found.warnings:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
def get(
    memory_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Show one memory through the running service. Exit 1 when there is no such memory."""
    with _service(url, api_key) as memory:
        record = memory.get(memory_id)
    if as_json:
        _print_json(record)
        return
    for name, value in dataclasses.asdict(record).items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
        typer.echo(f"{name:<17}{shown}")


@app.command()
def history(
    memory_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Every version of a memory, oldest first: valid from, until, status, id, content."""
    with _service(url, api_key) as memory:
        versions = memory.history(memory_id)
    if as_json:
        typer.echo(
            json.dumps([dataclasses.asdict(v) for v in versions], default=str, ensure_ascii=False)
        )
        return
    for v in versions:
        until = v.valid_until.isoformat() if v.valid_until else "-"
        start = v.valid_from.isoformat() if v.valid_from else "-"
        typer.echo(f"{start}  {until}  {v.status:<15}  {v.id}  {' '.join(v.content.split())}")


@app.command()
def delete(memory_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Delete one memory (with its links and vector) through the running service."""
    with _service(url, api_key) as memory:
        memory.forget(memory_id)
    typer.echo(f"deleted {memory_id}")


@app.command()
def mcp(
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    transport: Annotated[str, typer.Option(help="stdio, or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="Address to bind (http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (http); endpoint /mcp.")] = 10102,
) -> None:
    """The memory as MCP tools (remember, recall, forget, get_memory, link), calling the
    running service."""
    if transport not in ("stdio", "http"):
        _fail(ValidationFailed("--transport must be stdio or http"))
    from somafractalmemory.mcp_server import run

    run(url, api_key, transport, host, port)


# -- moving memories between stores (JSON lines, on the data directory) ------------------


@app.command("export")
def export_(
    path: Annotated[str, typer.Argument(help="JSON-lines file to write; '-' for stdout.")],
    tenant: Annotated[str, typer.Option(help="Whose memories.")] = "default",
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Only these (repeatable).")
    ] = None,
) -> None:
    """Write a tenant's memories with every field, their links and hierarchy, as JSON lines
    (read from SQL: works while the server runs)."""
    _django()
    from somafractalmemory.memories.jobs import transfer

    ids = list(transfer.memory_ids(tenant, namespace or ()))
    with contextlib.ExitStack() as stack:
        out = sys.stdout if path == "-" else stack.enter_context(open(path, "w", encoding="utf-8"))
        written = transfer.write(ids, out, progress=_progress("export"))
    typer.echo(f"exported {written} memories of tenant {tenant!r}", err=True)


@app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="A file `sfm export` wrote; '-' for stdin.")],
    tenant: Annotated[
        str | None, typer.Option(help="Import everything into this tenant [each record's].")
    ] = None,
) -> None:
    """Import an export: memories, links and hierarchy, with their vectors (or owed to the
    running server's outbox when it holds the index). Idempotent: memories already there are
    skipped. The file is checked before anything is written; exit 2 if it is refused."""
    _django()
    from django.core.management import call_command

    from somafractalmemory.memories import services

    call_command("migrate", interactive=False, verbosity=0)
    try:
        with contextlib.ExitStack() as stack:
            source = sys.stdin if path == "-" else stack.enter_context(open(path, encoding="utf-8"))
            done = services.load(source, tenant=tenant, progress=_progress("import"))
    except OSError as exc:
        _fail(ValidationFailed(f"cannot read {path}: {exc.strerror}"))
        return
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(
        f"imported {done.memories} memories ({done.skipped} already there), {done.links} links"
    )
    if done.owed:
        typer.echo(
            f"{done.owed} vectors are owed: the running server writes them, or run "
            "`sfm reindex --pending` when it is stopped",
            err=True,
        )


tenant_app = typer.Typer(help="Tenants: create, list, delete.", no_args_is_help=True)
key_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@tenant_app.command("create")
def tenant_create(
    name: str,
    max_memories: Annotated[int | None, typer.Option(help="Most memories it may hold.")] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Most content it may store.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
) -> None:
    """Create a tenant (or change its limits)."""
    _django()
    from somafractalmemory.memories import tenancy

    try:
        tenant = tenancy.create_tenant(
            name, max_memories=max_memories, max_bytes=max_bytes, requests_per_minute=rpm
        )
        tenancy.audit(tenant.id, "cli", "tenant.create", resource=tenant.id)
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"tenant {tenant.id}")


@tenant_app.command("list")
def tenant_list() -> None:
    """Tenants with their memory counts and limits."""
    _django()
    from somafractalmemory.memories import tenancy

    counts = tenancy.memory_counts()
    for t in tenancy.list_tenants():
        limits = (
            f"max_memories={t.max_memories} max_bytes={t.max_bytes} rpm={t.requests_per_minute}"
        )
        typer.echo(f"{t.id}\t{counts.get(t.id, 0)} memories\t{limits}")


@tenant_app.command("delete")
def tenant_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
    """Delete a tenant with all its memories, vectors, links, keys and jobs."""
    _django()
    from somafractalmemory.memories import tenancy
    from somafractalmemory.memories.models import DEFAULT_TENANT

    if name == DEFAULT_TENANT:
        _fail(ConfigError("the default tenant cannot be deleted"))
    if not yes:
        typer.confirm(f"Delete tenant {name} and everything it holds?", abort=True)
    try:
        counts = tenancy.delete_tenant(name)
        tenancy.audit(name, "cli", "tenant.delete", resource=name, details=counts)
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"deleted tenant {name}: {counts['memories']} memories, {counts['keys']} keys")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Option(help="The key's tenant.")] = "default",
    scopes: Annotated[str, typer.Option(help="Comma-separated: read,write,admin.")] = "read,write",
    namespaces: Annotated[str | None, typer.Option(help="Comma-separated allow-list.")] = None,
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
) -> None:
    """Create an API key. The key is printed once, alone on the last line."""
    _django()
    from somafractalmemory.memories import tenancy

    try:
        made = tenancy.create_key(tenant, _split(scopes), namespaces=_split(namespaces), name=name)
        tenancy.audit(tenant, "cli", "key.create", resource=made.key.id)
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"key {made.key.id} for tenant {tenant}, scopes {','.join(made.key.scopes)}")
    typer.echo(made.secret)


@key_app.command("list")
def key_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None) -> None:
    """Keys (never the keys themselves): id, tenant, prefix, scopes, namespaces, state."""
    _django()
    from somafractalmemory.memories import tenancy

    for k in tenancy.list_keys(tenant):
        state = "revoked" if k.revoked_at else f"last used {k.last_used_at or 'never'}"
        spaces = ",".join(k.namespaces) or "*"
        typer.echo(f"{k.id}\t{k.tenant_id}\t{k.prefix}…\t{','.join(k.scopes)}\t{spaces}\t{state}")


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke a key; requests with it fail from now on."""
    _django()
    from somafractalmemory.memories import tenancy

    try:
        key = tenancy.revoke_key(key_id)
        tenancy.audit(key.tenant_id, "cli", "key.revoke", resource=key.id)
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"revoked {key.id}")


master_app = typer.Typer(help="The master key that wraps tenants' data keys.")
app.add_typer(master_app, name="master-key")


@master_app.command("rotate")
def master_rotate() -> None:
    """Re-wrap every data key with master_key (old keys read with master_key_previous)."""
    _django()
    from somafractalmemory.memories import tenancy

    try:
        done = tenancy.rotate_master_key()
        tenancy.audit("default", "cli", "master_key.rotate", details=done)
    except SFMError as exc:
        _fail(exc)
        return
    typer.echo(f"re-wrapped {done['rewrapped']} data keys; {done['current']} were current")


@master_app.command("new")
def master_new() -> None:
    """Print a new random master key (base64), for SFM_MASTER_KEY."""
    import base64
    import secrets

    typer.echo(base64.b64encode(secrets.token_bytes(32)).decode())


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
