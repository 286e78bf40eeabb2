"""Operator commands: `outbox status|replay|reconcile|reindex|audit` and `outbox dlq list|redrive`.

Human output on stdout by default, `--json` where a script wants it (and then nothing
else on stdout); progress bars and logs on stderr. Exit codes: 0 all good, 1 a problem
was found (drift, DLQ entries, no active relay) or the operation failed, 2 a server is
unreachable (or bad usage), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from elasticsearch import ConnectionError as EsConnectionError
from pymongo.errors import ConnectionFailure
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from infra.errors import PipelineError, RetriableError, ServerUnreachableError
from infra.logging import configure_logging
from infra.settings import Settings, redact_uri

if TYPE_CHECKING:
    from operator_tools.clients import OperatorClients
    from operator_tools.status import StatusReport

# operator_tools is imported inside each command: the service commands (`outbox relay`,
# ...) must start even where the operator package is not installed yet.

T = TypeVar("T")

EXIT_PROBLEM = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

out = Console(soft_wrap=True)
err = Console(stderr=True)

dlq_app = typer.Typer(help="Inspect and re-drive dead-lettered events.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


# --- plumbing ----------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- /s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class RichProgress:
    """`operator_tools.progress_display.Progress` as a rich bar on stderr (rate and ETA)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=True)
            self._progress.stop_task(self._task)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        yield RichProgress(progress)


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run_ops(
    work: Callable[[OperatorClients], Awaitable[T]], *, settings: Settings | None = None
) -> T:
    """Run one use case with fresh clients; map failures to one line and an exit code."""
    from operator_tools.clients import open_clients  # noqa: PLC0415

    settings = settings or Settings()
    configure_logging(settings.log, service="ops")
    # The transport logs every failed connection; the command reports it once, clearly.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)

    async def main() -> T:
        async with open_clients(settings) as clients:
            return await work(clients)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        _fail("interrupted; what was sent is flushed, re-running is safe", EXIT_INTERRUPTED)
    except ServerUnreachableError as e:
        _fail(str(e), EXIT_UNREACHABLE)
    except ConnectionFailure as e:
        _fail(f"MongoDB at {settings.mongo.display_uri} is unreachable: {e}", EXIT_UNREACHABLE)
    except EsConnectionError as e:
        _fail(
            f"Elasticsearch at {redact_uri(settings.es.url)} is unreachable: {e}", EXIT_UNREACHABLE
        )
    except RetriableError as e:
        _fail(f"{e} (a server is unavailable; try again)", EXIT_UNREACHABLE)
    except (PipelineError, ValueError) as e:
        _fail(str(e), EXIT_PROBLEM)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise typer.BadParameter(f"not an ISO time: {value!r}", param_hint=option) from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --- status ------------------------------------------------------------------------------


def status(json_output: JsonOption = False) -> None:
    """Backlog, relay position and lag, consumer lag, DLQ size, per-collection counts."""

    from operator_tools.status import status as run_status  # noqa: PLC0415

    async def work(clients: OperatorClients) -> StatusReport:
        return await run_status(clients)

    report = run_ops(work)
    if json_output:
        _print_json(report.as_dict())
    else:
        _print_status(report)
    if report.problems:
        raise typer.Exit(code=EXIT_PROBLEM)


def _print_status(report: StatusReport) -> None:
    data = report.as_dict()
    relay = data["relay"]
    out.print(f"[bold]Relay[/bold] {relay['name']!r}")
    for lease in relay["leases"]:
        out.print(
            f"  lease {lease['name']!r}: {lease['role']} (holder {lease['holder']}, "
            f"until {lease['expires_at']}, oplog history left {lease['oplog_seconds_left']} s)"
        )
    if not relay["leases"]:
        out.print("  no relay has ever held a lease")
    pos = relay["position"]
    out.print(
        f"  position: event {pos['event_id']} at {pos['time']} "
        f"(checkpoint {pos['checkpoint_mode']}, written {pos['checkpoint_written_at']})"
    )
    out.print(
        f"  backlog: {relay['backlog']} outbox records, lag {relay['lag_seconds']:.1f} s "
        f"(newest record {relay['newest_record_time']})"
    )
    oldest, unowned = relay["oldest_unpublished"], relay["unowned"]
    if oldest["time"] is not None:
        out.print(f"  oldest unpublished: {oldest['time']} ({oldest['age_seconds']:.0f} s old)")
    if unowned["records"]:
        names = ", ".join(unowned["collections"])
        out.print(f"  unowned: {unowned['records']} records in {names} (no relay publishes them)")
    indexer = data["indexer"]
    out.print(f"[bold]Indexer[/bold] consumer lag {indexer['consumer_lag_total']}")
    if indexer["partitions"]:
        table = Table("topic", "partition", "committed", "end", "lag")
        for p in indexer["partitions"]:
            table.add_row(
                p["topic"], str(p["partition"]), str(p["committed"]), str(p["end"]), str(p["lag"])
            )
        out.print(table)
    out.print(
        f"[bold]DLQ[/bold] {data['dlq']['pending']} pending ({data['dlq']['total']} in the topic)"
    )
    if data["collections"]:
        table = Table("collection", "MongoDB live", "Elasticsearch live")
        for c in data["collections"]:
            es_live = "-" if c["elasticsearch"] is None else str(c["elasticsearch"])
            table.add_row(c["collection"], str(c["mongo"]), es_live)
        out.print(table)
    if report.problems:
        for problem in report.problems:
            out.print(f"[red]problem:[/red] {problem}")
    else:
        out.print("[green]ok[/green]")


# --- replay ------------------------------------------------------------------------------


def replay(  # noqa: PLR0917 - one parameter per CLI option, as typer wants
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Only this document id (repeatable).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Records at or after this ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Records before this ISO time.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every retained record.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, publish nothing.")] = False,
    rate: Annotated[
        float | None, typer.Option(help="At most N events per second.", min=0.001)
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Re-publish stored outbox records with their original event ids (marked replayed)."""
    from operator_tools.replay import ReplayFilter, ReplayRequestError  # noqa: PLC0415
    from operator_tools.replay import replay as run_replay  # noqa: PLC0415

    selection = ReplayFilter(
        collection=collection,
        ids=tuple(ids or ()),
        since=_parse_time(since, "--since"),
        until=_parse_time(until, "--until"),
        everything=everything,
    )
    try:
        selection.validate()
    except ReplayRequestError as e:
        raise typer.BadParameter(str(e)) from e

    async def work(clients: OperatorClients) -> dict[str, Any]:
        await clients.ping(es=False, kafka=not dry_run)
        with progress_bar() as bar:
            result = await run_replay(
                clients, selection, dry_run=dry_run, rate=rate, progress=bar, actor=_actor()
            )
        return result.as_dict()

    result = run_ops(work)
    if json_output:
        _print_json(result)
        return
    verb = "would re-publish" if dry_run else "re-published"
    count = result["matched"] if dry_run else result["published"]
    out.print(f"{verb} {count} of {result['matched']} outbox records")
    for name, n in result["by_collection"].items():
        out.print(f"  {name}: {n}")


# --- reconcile ---------------------------------------------------------------------------


def reconcile(
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-emit events for what drifted, then verify.")
    ] = False,
    wait: Annotated[
        float, typer.Option(help="With --repair: seconds to wait for the pipeline to apply.")
    ] = 30.0,
    json_output: JsonOption = False,
) -> None:
    """Compare MongoDB and Elasticsearch by id and version; exit 0 only without drift."""
    from operator_tools.reconcile import reconcile as run_reconcile  # noqa: PLC0415

    async def work(clients: OperatorClients) -> dict[str, Any]:
        await clients.ping(kafka=repair)
        with progress_bar() as bar:
            report = await run_reconcile(
                clients,
                collection=collection,
                repair=repair,
                verify_timeout_s=wait,
                progress=bar,
                actor=_actor(),
            )
        return report.as_dict()

    report = run_ops(work)
    if json_output:
        _print_json(report)
    else:
        _print_reconcile(report)
    if not report["in_sync"]:
        raise typer.Exit(code=EXIT_PROBLEM)


def _print_reconcile(report: dict[str, Any]) -> None:
    for c in report["collections"]:
        counts = ", ".join(f"{k} {v}" for k, v in c["counts"].items())
        out.print(f"[bold]{c['collection']}[/bold]: {c['mongo_documents']} documents; {counts}")
        if c["examples"]:
            table = Table("id", "kind", "MongoDB", "Elasticsearch")
            for ex in c["examples"]:
                table.add_row(
                    ex["id"],
                    ex["kind"],
                    _side(ex["mongo_version"], ex["mongo_deleted"]),
                    _side(ex["es_version"], ex["es_deleted"]),
                )
            out.print(table)
        if report["repaired"] and c["repair_events"]:
            out.print(f"  re-emitted {c['repair_events']} events")
    if report["drifted"] == 0:
        out.print("[green]in sync[/green]")
    elif report["repaired"]:
        state = "applied and verified" if report["verified"] else "NOT all applied in time"
        out.print(f"{report['drifted']} drifted; repairs {state}")
    else:
        out.print(f"[red]{report['drifted']} drifted[/red] (run with --repair to fix)")


def _side(version: int | None, deleted: bool | None) -> str:
    if version is None:
        return "absent"
    return f"v{version}{' (deleted)' if deleted else ''}"


# --- reindex -----------------------------------------------------------------------------


def reindex(
    collection: Annotated[str, typer.Argument(help="The collection to rebuild.")],
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Keep the old index after the swap.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Rebuild a collection's index from MongoDB and swap the alias without downtime."""
    from operator_tools.reindex import reindex as run_reindex  # noqa: PLC0415

    async def work(clients: OperatorClients) -> dict[str, Any]:
        await clients.ping(kafka=False)
        with progress_bar() as bar:
            result = await run_reindex(
                clients, collection, keep_old=keep_old, progress=bar, actor=_actor()
            )
        return result.as_dict()

    result = run_ops(work)
    if json_output:
        _print_json(result)
        return
    out.print(
        f"{result['alias']} now points at {result['new_index']} "
        f"({result['copied']} copied, {result['caught_up']} caught up)"
    )
    old = ", ".join(result["old_indices"]) or "none"
    out.print(f"old indices: {old} ({'removed' if result['removed_old'] else 'kept'})")


# --- dlq ---------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    pending_only: Annotated[
        bool, typer.Option("--pending", help="Only entries not yet re-driven.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Show dead-lettered events with their error; exit 1 if any is pending."""
    from operator_tools import dlq_ops  # noqa: PLC0415

    async def work(clients: OperatorClients) -> list[dict[str, Any]]:
        await clients.ping(es=False)
        return [e.as_dict() for e in await dlq_ops.list_entries(clients)]

    entries = run_ops(work)
    if pending_only:
        entries = [e for e in entries if e["redriven_at"] is None]
    if json_output:
        _print_json(entries)
    elif not entries:
        out.print("the DLQ is empty")
    else:
        table = Table("id", "stage", "collection", "document", "version", "error", "redriven")
        for e in entries:
            table.add_row(
                e["id"],
                e["stage"],
                str(e["collection"]),
                str(e["document_id"]),
                str(e["version"]),
                e["error"],
                e["redriven_at"] or "-",
            )
        out.print(table)
    if any(e["redriven_at"] is None for e in entries):
        raise typer.Exit(code=EXIT_PROBLEM)


@dlq_app.command("redrive")
def dlq_redrive(
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="DLQ id or event id (repeatable).")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every entry not yet re-driven.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Send dead-lettered events back into the pipeline (after fixing the cause)."""
    from operator_tools import dlq_ops  # noqa: PLC0415

    if not ids and not everything:
        raise typer.BadParameter("say which entries to re-drive: --id ID (repeatable) or --all")

    async def work(clients: OperatorClients) -> dict[str, Any]:
        await clients.ping(es=False)
        result = await dlq_ops.redrive(
            clients, ids=ids or [], everything=everything, actor=_actor()
        )
        return result.as_dict()

    result = run_ops(work)
    if json_output:
        _print_json(result)
    else:
        out.print(f"re-drove {len(result['redriven'])} events")
        for i, why in result["skipped"].items():
            out.print(f"  skipped {i}: {why}")
        for i in result["not_found"]:
            out.print(f"  [red]not found:[/red] {i}")
    if result["skipped"] or result["not_found"]:
        raise typer.Exit(code=EXIT_PROBLEM)


# --- audit -------------------------------------------------------------------------------


def audit(
    since: Annotated[
        str | None,
        typer.Option(
            help="Only outbox records of the last DURATION (90s, 15m, 1h30m, 7d); "
            "default: everything retained."
        ),
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    grace: Annotated[
        float,
        typer.Option(
            help="Seconds behind the relay's committed position before a record missing "
            "from Kafka counts as lost.",
            min=0,
        ),
    ] = 120.0,
    json_output: JsonOption = False,
) -> None:
    """Check exactly-once: every outbox record in Kafka once, in order, and indexed."""
    from datetime import timedelta  # noqa: PLC0415

    from infra.naming import is_collection_name  # noqa: PLC0415
    from operator_tools.audit import AuditReport  # noqa: PLC0415
    from operator_tools.audit import audit as run_audit  # noqa: PLC0415
    from operator_tools.audit_rules import parse_duration  # noqa: PLC0415

    try:
        window = None if since is None else parse_duration(since)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from e
    if collection is not None and not is_collection_name(collection):
        raise typer.BadParameter(
            f"not a collection name: {collection!r}", param_hint="--collection"
        )

    async def work(clients: OperatorClients) -> AuditReport:
        await clients.ping()
        with progress_bar() as bar:
            return await run_audit(
                clients,
                since=window,
                collection=collection,
                grace=timedelta(seconds=grace),
                progress=bar,
            )

    report = run_ops(work)
    if json_output:
        _print_json(report.as_dict())
    else:
        _print_audit(report.as_dict())
    if not report.ok:
        raise typer.Exit(code=EXIT_PROBLEM)


_AUDIT_PROBLEMS = ("lost", "duplicated", "misordered", "drift")


def _print_audit(report: dict[str, Any]) -> None:
    window, read = report["window"], report["read"]
    scope = f"collection {window['collection']}" if window["collection"] else "every collection"
    clamped = " (clamped to the outbox retention)" if window["clamped_to_retention"] else ""
    out.print(f"[bold]Audit[/bold] of {scope}: outbox records since {window['since']}{clamped}")
    if window["judged_until"] is None:
        judged = "no record judged lost (the relay never committed a checkpoint)"
    else:
        judged = (
            f"records up to {window['judged_until']} judged for loss (relay position "
            f"{window['relay_position']} minus {window['grace_seconds']:g} s)"
        )
    out.print(f"  {judged}")
    out.print(
        f"  read {read['outbox_records']} outbox records, {read['kafka_messages']} Kafka "
        f"messages, {read['documents']} documents, {read['indexed_documents']} index entries "
        f"in {read['seconds']:.1f} s"
    )
    breakdown = report["breakdown"]
    out.print(
        f"lost={report['lost']} duplicated={report['duplicated']} "
        f"misordered={report['misordered']} drift={report['drift']} replayed={report['replayed']}",
        highlight=False,
    )
    not_judged = report["not_judged"]
    out.print(
        f"  not judged yet: {not_judged['pending']} records not in Kafka yet, "
        f"{not_judged['unindexed']} documents not indexed yet; "
        f"{report['recovered']} records only in Kafka as replays; "
        f"{report['outside_window']} messages of events older than the window",
        highlight=False,
    )
    if report["duplicated"]:
        dup = breakdown["duplicated"]
        out.print(
            f"  duplicated: {dup['extra_copies']} extra copies, "
            f"{dup['unknown_events']} events no outbox record of the window has"
        )
    if report["drift"]:
        kinds = ", ".join(f"{k} {v}" for k, v in breakdown["drift"].items() if v)
        out.print(f"  drift: {kinds}")
    for category in _AUDIT_PROBLEMS:
        examples = report["examples"].get(category)
        if not examples:
            continue
        out.print(f"[bold]{category}[/bold], e.g.:")
        for e in examples:
            # One line per example, never a table: ids stay whole and greppable.
            line = " ".join(f"{k}={_cell(v)}" for k, v in e.items() if v is not None)
            out.print(f"  {line}", highlight=False, markup=False)
    for note in report["notes"]:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")
    if report["ok"]:
        out.print("[green]ok[/green]")
    else:
        failed = ", ".join(c for c in _AUDIT_PROBLEMS if report[c])
        out.print(f"[red]FAIL[/red]: {failed}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
