"""The `lakehouse` command: one sub-command per stage, plus run-all and the servers."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core import metrics
from lakehouse.core.config import Rate, Seconds, Settings, Share, Wait
from lakehouse.core.logs import configure

log = logging.getLogger("lakehouse.app.cli")


class _Checked(click.ParamType):
    """A number option checked by its type in lakehouse/core/config.py, as the settings are (a range that
    also refuses NaN and infinity, which click's own range check lets by)."""

    name = "number"

    def __init__(self, kind: Any) -> None:
        self.kind = kind

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        from lakehouse.core.config import check_number

        try:
            return check_number(self.kind, value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SECONDS, WAIT, RATE, SHARE = (_Checked(kind) for kind in (Seconds, Wait, Rate, Share))


class LakehouseGroup(click.Group):
    """Every error of the project's hierarchy (lakehouse/core/errors.py) is one line: a ConfigError is a
    usage error (exit code 2), the rest exit 1; a client library's "cannot connect" or "refused" becomes
    the line naming the server and what to do. An unexpected error keeps its traceback (a bug)."""

    def invoke(self, ctx: click.Context) -> Any:
        from lakehouse.adapters import explain
        from lakehouse.core.errors import ConfigError, redact

        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # a usage or one-line error may quote a URI the user gave
            exc.message = redact(exc.message)
            raise
        except ConfigError as exc:
            raise click.UsageError(redact(str(exc)), ctx=ctx) from exc
        except Exception as exc:
            known = explain(ctx.obj, exc) if isinstance(ctx.obj, Settings) else None
            if known is None:
                raise
            raise click.ClickException(redact(str(known))) from exc


def _setting_options(command: Any) -> Any:
    """The global options, one per setting declared with a flag in lakehouse/core/config.py."""
    from lakehouse.core.config import cli_options

    for flag, field, help_text in reversed(list(cli_options())):
        command = click.option(flag, field, default=None, help=help_text)(command)
    return command


@click.group(cls=LakehouseGroup)
@_setting_options
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["plain", "json"]), default="plain", show_default=True)
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str, **options: Any) -> None:
    """MongoDB change streams -> Kafka -> Spark -> Delta/Parquet -> DuckDB."""
    configure(log_level, log_format)
    ctx.meta["setting_flags"] = options
    ctx.obj = Settings.from_env(**options)


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.option("--table", is_flag=True, help="Every setting as the README's Markdown table, instead.")
@click.pass_context
def config_command(ctx: click.Context, as_json: bool, table: bool) -> None:
    """The effective settings, each with where it came from (default, env or flag); passwords masked."""
    import json

    from lakehouse.core.config import effective, settings_table

    if table:
        click.echo(settings_table())
        return
    rows = list(effective(ctx.obj, ctx.meta.get("setting_flags", {})))
    if as_json:
        click.echo(json.dumps([dict(zip(("section", "variable", "value", "source"), row, strict=True))
                               for row in rows], indent=2))
        return
    width = max(len(variable) for _, variable, _, _ in rows)
    section = None
    for name, variable, value, source in rows:
        if name != section:
            click.echo(f"[{name}]" if section is None else f"\n[{name}]")
            section = name
        click.echo(f"  {variable:<{width}}  {value}  ({source})")


@cli.command("servers")
@click.argument("action", type=click.Choice(["start", "stop", "status"]))
@click.pass_obj
def servers_command(settings: Settings, action: str) -> None:
    """Start, stop or check the local MongoDB replica set and Kafka broker."""
    from infra import servers

    try:
        for line in getattr(servers, action)(settings):
            click.echo(line)
    except servers.StackError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--snapshot", type=click.Choice(["initial", "never", "when_needed"]), default="initial",
              show_default=True, help="Copy existing documents first when there is no stored token.")
@click.option("--until-idle", is_flag=True, help="Stop once the change stream has nothing new.")
@click.pass_obj
def produce(settings: Settings, snapshot: str, until_idle: bool) -> None:
    """Capture MongoDB changes into Kafka until SIGTERM/SIGINT."""
    from producer.listener import ChangeStreamListener, serve

    if until_idle:  # a bounded run: a server away is an error to report
        listener = ChangeStreamListener(settings, snapshot_mode=snapshot)
        listener.install_signal_handlers()
        try:
            stats = listener.run(until_idle=True)
        finally:
            listener.close()
    else:  # a service: a server away is waited for
        metrics.serve(settings, "producer")
        stats = serve(settings, snapshot)
    click.echo(f"producer stopped: {stats.published} events published, {stats.snapshots} snapshot copies, "
               f"{stats.dead_lettered} dead-lettered")


@cli.command()
@click.option("--events", type=click.IntRange(min=1), default=1000, show_default=True, help="How many changes to make.")
@click.option("--rate", type=RATE, default=None, help="Changes per second (default: as fast as possible).")
@click.option("--seed", default=42, show_default=True)
@click.option("--violations", envvar="VIOLATIONS", type=SHARE, default=0.0, show_default=True,
              help="Share of order changes that break a business rule on purpose (e.g. 0.02), for the quality checks.")
@click.pass_obj
def generate(settings: Settings, events: int, rate: float | None, seed: int, violations: float) -> None:
    """Insert, update, replace and delete orders in MongoDB."""

    from producer.generator import OrderGenerator

    client = connect_mongo(settings, "lakehouse-generator")
    generator = OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=seed,
                                            violations=violations)
    stats = generator.run(events, rate, progress=lambda s: click.echo(f"generated {s.total}/{events}"))
    click.echo(f"inserts={stats.inserts} updates={stats.updates} replaces={stats.replaces} "
               f"deletes={stats.deletes} reference upserts={stats.references} rule violations={stats.violations}")


@cli.command()
@click.option("--available-now", is_flag=True, help="Process what Kafka holds now, then stop.")
@click.pass_obj
def stream(settings: Settings, available_now: bool) -> None:
    """Run the Spark Structured Streaming job (Kafka -> Delta/Parquet lake)."""
    from streaming.job import run

    if not available_now:
        metrics.serve(settings, "streaming")
    run(settings, available_now=available_now)


@cli.command("load")
@click.option("--every", type=SECONDS, default=None,
              help="Keep loading until Ctrl-C/SIGTERM (a loader service): look for a new silver version every "
                   "this many seconds (cheap: the warehouse is opened only when there is one).")
@click.option("--reconcile-every", type=SECONDS, default=None,
              help="With --every: reconcile with MongoDB every this many seconds.")
@click.option("--repair/--report-only", default=True, show_default=True,
              help="What a periodic reconcile does with differences that persist.")
@click.option("--settle", type=WAIT, default=15.0, show_default=True,
              help="A periodic reconcile looks again after this many seconds of loading; only what still "
                   "differs counts (changes in flight are not differences).")
@click.pass_obj
def load_command(settings: Settings, every: float | None, reconcile_every: float | None, repair: bool,
                 settle: float) -> None:
    """Load what is new in the lake into the DuckDB warehouse."""
    from lakehouse.app.service import LoaderService
    from lakehouse.core.stopping import Interrupted, StopSignals
    from warehouse.errors import WarehouseError
    from warehouse.loader import load

    try:
        if every is None:
            result = load(settings)
            click.echo(_loaded(result))
            return
        click.echo(f"loading {settings.lake_path} into {settings.warehouse_path} every {every:g}s; Ctrl-C stops")
        metrics.serve(settings, "loader")
        with StopSignals() as signals:
            service = LoaderService(settings, every, reconcile_every, repair, settle, say=click.echo,
                                    wait=signals.wait)
            try:
                while True:
                    was_ready = service.ready
                    result = service.round()
                    if result is not None and result.rows_read:
                        click.echo(_loaded(result))
                    if service.ready and not was_ready:
                        click.echo(f"loader ready: the warehouse has silver v{service.loaded_version}")
                    signals.wait(every)
            except Interrupted:
                click.echo("loader stopped")
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc


def _loaded(result: Any) -> str:
    from warehouse.loader import current_documents

    return (f"loaded delta version {result.delta_version}: {result.rows_read} rows read, {result.new_changes} new "
            f"changes; current documents: {current_documents(result.current)}")


@cli.command("reconcile")
@click.option("--collection", "collections", multiple=True,
              help="Reconcile this captured collection (repeatable); default: every captured collection.")
@click.option("--repair", "do_repair", is_flag=True,
              help="Publish every difference as a repair event (MongoDB's state, or a delete) through Kafka.")
@click.option("--settle", type=WAIT, default=0.0, show_default=True,
              help="Look again after this many seconds of loading; only what still differs counts.")
@click.pass_obj
def reconcile_command(settings: Settings, collections: tuple[str, ...], do_repair: bool, settle: float) -> None:
    """Compare each collection's current state in the warehouse with MongoDB: one `reconciled:` line per
    collection, then the total. Exit 1 when they differ (with --repair: when a difference could not be
    sent for repair)."""
    from lakehouse.app.reconcile import combined, confirmed, lines, reconcile_each, record, repair
    from warehouse.errors import WarehouseError
    from warehouse.loader import load_if_possible

    unknown = [c for c in collections if c not in settings.collections]
    if unknown:
        raise click.UsageError(f"--collection {unknown[0]!r} is not a captured collection (captured: "
                               f"{', '.join(settings.collections)}; see collections.toml and COLLECTIONS)")
    try:
        results = reconcile_each(settings, collections or None)
        if settle:
            results = confirmed(settings, results, settle, lambda: load_if_possible(settings))
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc
    total = combined(results)
    for line in total.examples():
        click.echo(line)
    if do_repair:
        for result in results:
            repair(settings, result, say=click.echo)
        total = combined(results)
    if settings.state_dir.exists():
        record(settings, results, settle or None)
    for line in lines(results):
        click.echo(line)
    sys.exit(0 if total.ok or (do_repair and total.repaired) else 1)


@cli.command("replay")
@click.option("--into", "target", type=click.Choice(["kafka", "lake", "warehouse"]), required=True,
              help="kafka: re-publish from MongoDB; lake: reprocess Kafka under a new checkpoint; "
                   "warehouse: reload DuckDB from the lake.")
@click.option("--from-token", help='MongoDB resume token, {"_data": "..."} or the hex string (kafka, warehouse).')
@click.option("--from-time", help="ISO 8601 time, e.g. 2026-11-23T10:00:00Z: cluster time for kafka and "
                                  "warehouse, Kafka message time for lake.")
@click.option("--from-offsets", help="topic:partition:offset,... (lake, warehouse).")
@click.option("--from-beginning", is_flag=True, help="Everything: a new snapshot, all of Kafka, or the whole lake.")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.pass_obj
def replay_command(settings: Settings, target: str, from_token: str | None, from_time: str | None,
                   from_offsets: str | None, from_beginning: bool, dry_run: bool) -> None:
    """Feed a stage again from a starting point; safe to repeat (the warehouse ends equal to the source).

    \b
    lakehouse replay --into kafka --from-time 2026-11-23T10:00:00Z
    lakehouse replay --into lake --from-offsets cdc.shop.orders:0:1200,cdc.shop.orders:1:1180
    lakehouse replay --into warehouse --from-beginning --dry-run
    """
    from lakehouse.app.replay import ReplayError, replay, start_point
    from warehouse.errors import WarehouseError

    try:
        start = start_point(from_token, from_time, from_offsets, from_beginning)
        replay(settings, target, start, dry_run=dry_run, say=click.echo)
    except ReplayError as exc:
        raise click.UsageError(str(exc)) from exc
    except WarehouseError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.pass_obj
def status_command(settings: Settings, as_json: bool) -> None:
    """Per stage: what it has done and how far behind it is, and end-to-end freshness."""
    import json

    from lakehouse.app.status import collect, render

    report = collect(settings)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(render(report)))


@cli.command("metrics")
@click.option("--serve", is_flag=True,
              help="Serve them at http://METRICS_HOST:MONITOR_METRICS_PORT/metrics (the monitor) until Ctrl-C "
                   "instead of printing once.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="With --serve: this port instead.")
@click.pass_obj
def metrics_command(settings: Settings, serve: bool, port: int | None) -> None:
    """Lag, freshness, data loss, quality and the last reconcile in Prometheus text format: what no single
    service knows (each service serves its own counters; see the README's Monitoring)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from lakehouse.app.status import StatusCollector, collect, prometheus
    from lakehouse.core.stopping import Interrupted, StopSignals

    if not serve:
        click.echo(prometheus(collect(settings)), nl=False)
        return
    port = port or settings.monitor_metrics_port
    # Its own registry: the monitor serves the status figures only, never this process's (unused) copies
    # of the services' metrics, some of which share a name with a status figure.
    registry = CollectorRegistry()
    registry.register(StatusCollector(settings))
    try:
        server, _ = start_http_server(port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {settings.metrics_host}:{port} ({exc}); give "
                                   "another with --port or MONITOR_METRICS_PORT") from exc
    click.echo(f"serving metrics at http://{settings.metrics_host}:{server.server_port}/metrics (Ctrl-C stops)")
    with StopSignals() as signals:
        try:
            while True:
                signals.wait(3600)
        except Interrupted:
            pass
    server.shutdown()


@cli.command("run-all")
@click.option("--events", envvar="EVENTS", type=click.IntRange(min=1), default=3000, show_default=True,
              help="Changes to generate.")
@click.option("--rate", envvar="RATE", type=RATE, default=None, help="Changes per second (default: unthrottled).")
@click.option("--timeout", type=SECONDS, default=600.0, show_default=True,
              help="Seconds to wait for the warehouse to catch up.")
@click.option("--stop/--no-stop", "stop_servers", envvar="STOP", default=False,
              help="Stop the servers afterwards (default: leave them up for the notebooks).")
@click.option("--follow", envvar="FOLLOW", is_flag=True,
              help="Live demo: keep generating (RATE, default 20/s) and print a status line until Ctrl-C.")
@click.option("--every", type=SECONDS, default=5.0, show_default=True,
              help="Seconds between status lines with --follow.")
@click.option("--violations", envvar="VIOLATIONS", type=SHARE, default=0.0, show_default=True,
              help="Share of order changes that break a business rule on purpose (e.g. 0.02), for the quality checks.")
@click.option("--reconcile-every", type=SECONDS, default=None,
              help="With --follow: reconcile with MongoDB (and repair what persists) this often, in seconds.")
@click.pass_obj
def run_all_command(settings: Settings, events: int, rate: float | None, timeout: float, stop_servers: bool,
                    follow: bool, every: float, reconcile_every: float | None, violations: float) -> None:
    """Servers, producer, streaming and warehouse end to end; ends with a `reconciled:` line.

    With --follow it keeps going until Ctrl-C, which stops every process it started."""
    from lakehouse.app.run_all import run_all

    code = run_all(settings, events, rate, timeout, stop_servers, violations, follow_every=every if follow else None,
                   reconcile_every=reconcile_every)
    sys.exit(code)


def _redacting_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """An unexpected error still prints its traceback (it is a bug to report), with passwords masked."""
    import traceback

    from lakehouse.core.errors import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def main() -> None:
    sys.excepthook = _redacting_excepthook
    cli(prog_name="lakehouse")


if __name__ == "__main__":
    main()
