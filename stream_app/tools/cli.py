"""The ``stream-app`` command line: worker, broker, demo, generate, replay, watch, forget,
audiences, verify, explain, evaluate, bench, soak.

Options that configure the app write the environment variable of the same setting
(see :mod:`stream_app.config`), so options and environment are interchangeable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stream_app.client.subscribe import (
    AudienceChangeEvent,
    CatalogueChangeEvent,
    SegmentChangeEvent,
    trigger_names,
)
from stream_app.config import Settings
from stream_app.model.options import CLUSTERERS
from stream_app.tools.generator import PROFILES

F = Callable[..., Any]

#: (option, environment variable, help) of the settings every Kafka-facing command takes.
COMMON = (
    ("--bootstrap", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers, comma-separated."),
    ("--app-id", "STREAM_APP_ID", "Application id (consumer group, internal topic prefix)."),
    ("--clickstream-topic", "CLICKSTREAM_TOPIC", "Clickstream input topic."),
    ("--purchases-topic", "PURCHASES_TOPIC", "Purchases input topic."),
    ("--profiles-topic", "PROFILES_TOPIC", "Customer-profiles input topic."),
    ("--segment-changes-topic", "SEGMENT_CHANGES_TOPIC", "Output topic of segment changes."),
    ("--dlq-topic", "DLQ_TOPIC", "Dead-letter topic for rejected input."),
)
WORKER = (
    ("--web-port", "WEB_PORT", "HTTP port of the worker (API and /metrics)."),
    ("--segments-k", "SEGMENTS_K", "Number of micro-segments."),
    ("--data-dir", "DATA_DIR", "Directory for table state."),
    ("--topic-partitions", "TOPIC_PARTITIONS", "Partitions of topics the worker creates."),
    ("--table-store", "TABLE_STORE", "Table store: memory:// or rocksdb://."),
)


def settings_options(specs: tuple[tuple[str, str, str], ...]) -> Callable[[F], F]:
    """Add one option per setting; a given option sets its environment variable."""

    def decorate(fn: F) -> F:
        for flag, env, help_text in reversed(specs):
            def store(ctx: click.Context, param: click.Parameter, value: Any,
                      env: str = env) -> Any:
                if value is not None:
                    os.environ[env] = str(value)
                return value
            fn = click.option(flag, env, default=None, expose_value=False, callback=store,
                              is_eager=True, help=f"{help_text} [env: {env}]")(fn)
        return fn

    return decorate


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
@click.version_option(package_name="stream-app")
def main() -> None:
    """Live behavioural micro-segmentation of customers on Kafka."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@settings_options(COMMON + WORKER)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Faust worker. Any other option is passed to Faust's worker (see --help)."""
    from stream_app.worker.app import create_app
    from stream_app.worker.logs import setup_logging
    from stream_app.worker.topics import TopicLayoutError, prepare_topics

    settings = load_settings()
    faust_args = list(ctx.args)
    partitions = settings.topic_partitions
    if settings.audiences_file:  # a broken definitions file stops the start, not a reload
        from stream_app.core.audiences import AudienceError, AudienceSet

        try:
            AudienceSet.load(settings.audiences_file)
        except (AudienceError, OSError) as exc:
            click.echo(f"stream-app worker: AUDIENCES_FILE: {exc}", err=True)
            sys.exit(2)
    if "--help" in faust_args:
        click.echo(ctx.get_help().replace("Options:", "stream-app options:", 1))
        click.echo("\nFaust worker options (passed through):\n")
    else:
        # Customer data never reaches the network without a token (docs/security.md).
        problem = settings.exposure_problem()
        if problem is not None:
            click.echo(f"stream-app worker: {problem}", err=True)
            sys.exit(2)
        # Faust reads WEB_BIND from the environment too, over the app's setting: an empty
        # one (the default to Settings) made Faust bind every interface.
        os.environ["WEB_BIND"] = settings.web_bind
        if settings.api_open and not settings.api_token:
            click.echo(f"stream-app worker: API_OPEN=true: customer data is served without "
                       f"a token on WEB_BIND={settings.web_bind}", err=True)
        setup_logging(settings.log_level, settings.log_format)
        try:
            plan = asyncio.run(prepare_topics(settings))
        except TopicLayoutError as exc:
            click.echo(f"stream-app worker: {exc}", err=True)
            sys.exit(2)
        partitions = plan.partitions
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in faust_args):
        faust_args = ["--loglevel", settings.log_level, *faust_args]
    app = create_app(settings, partitions)
    if "--help" not in faust_args:
        from stream_app.worker.connectivity import watch_broker

        watch_broker(app, settings)  # outage logs, calm retries, a bounded stop
    # JSON logs: no banner on stdout, so every line is one JSON object.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    sys.argv = ["stream-app", *event_loop(), *quiet, "worker", *faust_args]
    app.main()


def event_loop() -> list[str]:
    """Faust's ``--loop`` option: uvloop where it is installed (Linux, macOS)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return []
    return ["--loop", "uvloop"]


@main.command()
@click.option("--port", default=9092, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(port: int, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C."""
    from stream_app.worker.broker import EmbeddedBroker

    b = EmbeddedBroker(port=port, host=host)
    try:
        b.start()
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"broker listening on {b.bootstrap_servers} (memory storage); Ctrl-C stops it")
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        assert b.process is not None
        b.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@main.command()
@settings_options(COMMON)
@click.option("--customers", default=2000, show_default=True, help="Number of customers.")
@click.option("--rate", default=200.0, show_default=True, help="Events per second.")
@click.option("--duration", default=60.0, show_default=True,
              help="Seconds to run (0: until Ctrl-C); planted profile only.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same events).")
@click.option("--time-scale", default=1440.0, show_default=True,
              help="Event-time seconds per wall-clock second (1440: a day a minute); planted "
                   "profile only.")
@click.option("--max-speed", is_flag=True, help="Send as fast as possible (event time unchanged).")
@click.option("--profile", "workload", default="planted", show_default=True,
              type=click.Choice(PROFILES),
              help="Workload: planted customer types, or a realistic retail history (540 days "
                   "ending now, sent whole) of purchases only or with clicks (retail-mixed).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def generate(customers: int, rate: float, duration: float, seed: int, time_scale: float,
             max_speed: bool, workload: str, no_progress: bool) -> None:
    """Send synthetic traffic: clickstream, purchases and profiles with planted customer
    types, or (--profile retail, retail-mixed) a realistic retail history. A progress bar
    on stderr shows the messages acknowledged by the broker."""
    from stream_app.tools.generator import make_shop, produce
    from stream_app.tools.replay import progress_bar

    settings = load_settings()
    now = int(time.time() * 1000)

    def send(events: Any, total: int | None) -> int:
        bar = progress_bar("generate", not no_progress)
        task = bar.add_task("sent", total=total)

        def sent_so_far(n: int) -> None:
            if not bar.live.is_started:  # shown once connected: a refused broker is one line
                bar.start()
            bar.update(task, completed=n)

        try:
            return run_kafka(produce(settings.bootstrap_servers, settings.kind_topics, events,
                                     None if max_speed else rate, on_sent=sent_so_far),
                             settings)
        finally:
            if bar.live.is_started:
                bar.stop()

    if workload != "planted":  # the whole history, ending now (not in the future)
        shop = make_shop(workload, customers, seed, None)
        click.echo(f"sending {shop.total_events} events of {customers} customers "
                   f"({workload}, {shop.span_days:g} days of history)", err=True)
        sent = send(shop.events(), shop.total_events)
        click.echo(f"sent {sent} messages for {customers} customers")
        return
    step_ms = max(1, int(1000 * time_scale / rate))
    total = int(rate * duration) if duration > 0 else None
    if total is not None:
        start = now - total * step_ms
        clock = None
    else:
        start = now - 30 * 86_400_000
        def clock(i: int) -> int:  # catch up on 30 days of history, then real time
            return min(start + i * step_ms, int(time.time() * 1000))
    planted = make_shop(workload, customers, seed, start, step_ms=step_ms)
    sent = send(planted.events(total, clock), total)  # type: ignore[call-arg]
    click.echo(f"sent {sent} messages for {customers} customers")


@main.command()
@settings_options(COMMON)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None,
              help="Send every line to this topic (default: by kind, to the configured inputs).")
@click.option("--rate", default=None, type=float, help="Events per second (default: flat out).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--wait", "wait_s", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="After sending, wait for the worker to consume every message; give up "
                   "after this many seconds in which it consumed none.")
@click.option("--no-wait", is_flag=True,
              help="Only send: neither wait for the worker nor report what it rejected.")
@click.option("--url", default=None,
              help="A worker's HTTP address, for its model version at the end "
                   "(default: http://127.0.0.1:$WEB_PORT).")
def replay(file: Path, topic: str | None, rate: float | None, no_progress: bool,
           wait_s: float, no_wait: bool, url: str | None) -> None:
    """Backfill: send a JSONL file of historical events into Kafka, with a progress bar,
    then wait until the worker (consumer group STREAM_APP_ID) has consumed them and report
    how many it processed and how many it rejected to the DLQ, by reason.

    Exits 1 when any message was rejected, when the worker did not consume them all
    (nothing consumed for --wait seconds), or when no broker answers.
    """
    from stream_app.tools.replay import WorkerFollow, model_note
    from stream_app.tools.replay import replay as run_replay

    settings = load_settings()

    async def run() -> Any:
        if no_wait:
            return await run_replay(file, settings.bootstrap_servers, settings.kind_topics,
                                    topic, rate, progress=not no_progress)
        async with WorkerFollow(settings.bootstrap_servers, settings.app_id,
                                settings.dlq_topic) as follow:
            return await run_replay(file, settings.bootstrap_servers, settings.kind_topics,
                                    topic, rate, progress=not no_progress, follow=follow,
                                    wait_idle_s=wait_s)

    sent, report = run_kafka(run(), settings)
    head = f"replayed {sent.count} messages from {file}"
    if report is None:
        click.echo(f"{head} (sent only, --no-wait: what the worker made of them is not "
                   "checked)")
        return
    if not report.complete:
        click.echo(f"{head}: the worker consumed {report.consumed} of them, then none for "
                   f"{wait_s:g} s; so far {report.summary()}; DLQ topic {settings.dlq_topic}")
        raise click.ClickException(
            f"not confirmed: {sent.count - report.consumed} messages not consumed. Is a "
            f"worker of consumer group {settings.app_id!r} (STREAM_APP_ID) reading "
            f"{', '.join(sorted({t for t, _ in sent.offsets}))}?")
    click.echo(f"{head}: {report.summary()}; DLQ topic {settings.dlq_topic}")
    click.echo(model_note(url or f"http://127.0.0.1:{settings.web_port}"))
    if report.rejected_total:
        sys.exit(1)


def run_kafka(coroutine: Any, settings: Settings) -> Any:
    """``asyncio.run(coroutine)`` for a command that talks to Kafka: no broker answering,
    or a Kafka error later on, ends the command with one line saying so (status 1), not a
    traceback."""
    from aiokafka.errors import KafkaError

    from stream_app.client.kafka import BrokerUnreachable

    try:
        return asyncio.run(coroutine)
    except BrokerUnreachable as exc:
        raise click.ClickException(f"{exc}. Check KAFKA_BOOTSTRAP_SERVERS or --bootstrap.") \
            from None
    except (KafkaError, OSError) as exc:
        raise click.ClickException(f"Kafka at {settings.kafka_bootstrap_servers} failed: "
                                   f"{type(exc).__name__}: {exc}".rstrip(": ")) from None


@main.group()
def audiences() -> None:
    """Named, rule-defined audiences (AUDIENCES_FILE)."""


@audiences.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def audiences_check(file: Path) -> None:
    """Validate an audience definitions FILE (YAML or JSON) as the worker would, and list
    its audiences with their version; status 2 with every problem (one line each, naming
    the audience, and the line in a YAML file) if it is invalid."""
    from stream_app.core.audiences import check_file, describe

    definitions, problems = check_file(file)
    if definitions is None:
        for problem in problems:
            click.echo(f"stream-app audiences check: {problem}", err=True)
        click.echo(f"stream-app audiences check: {file}: {len(problems)} problem"
                   f"{'s' if len(problems) != 1 else ''}; the worker would not load it",
                   err=True)
        sys.exit(2)
    click.echo(describe(definitions))


@audiences.command("preview")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--url", default=None,
              help="A worker's HTTP address; it asks the others (default: "
                   "http://127.0.0.1:$WEB_PORT).")
@click.option("--token", default="", envvar="API_TOKEN", show_envvar=True,
              help="The workers' API token (Authorization: Bearer), when they have one.")
@click.option("--time-limit", "time_limit", default=30.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True, max=600),
              help="Seconds the workers may spend judging; past it the answer is partial.")
@click.option("--json", "as_json", is_flag=True, help="Print the worker's answer as JSON.")
def audiences_preview(file: Path, url: str | None, token: str, time_limit: float,
                      as_json: bool) -> None:
    """What the definitions of FILE would hold on the running workers' customers, without
    applying them: members, who would enter and exit, segment and audience overlaps, a few
    member ids, and the applied audiences FILE drops. Nothing is written or sent.

    Status 0 when every customer was judged, 3 when the answer is partial (the time limit,
    or a worker that did not answer), 2 when FILE is invalid (every problem, as `audiences
    check` lists them) or the worker cannot be reached or refuses the token.
    """
    from stream_app.client.worker_api import WorkerAccessError, WorkerError, preview_text
    from stream_app.core.audiences import check_file

    definitions, problems = check_file(file)
    if definitions is None:
        for problem in problems:
            click.echo(f"stream-app audiences preview: {problem}", err=True)
        click.echo(f"stream-app audiences preview: {file}: {len(problems)} problem"
                   f"{'s' if len(problems) != 1 else ''}; nothing previewed", err=True)
        sys.exit(2)
    url = url or f"http://127.0.0.1:{load_settings().web_port}"
    try:
        answer = _previewing(url, definitions.to_document(), token, time_limit,
                             len(definitions))
    except WorkerAccessError as exc:
        click.echo(f"stream-app audiences preview: {exc}", err=True)
        sys.exit(exc.status)
    except ValueError as exc:  # the worker refused the document (400)
        click.echo(f"stream-app audiences preview: the worker refused {file}: {exc}", err=True)
        sys.exit(2)
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        import orjson

        click.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(preview_text(answer))
    if not answer.get("complete"):
        click.echo("stream-app audiences preview: partial answer: not every customer was "
                   "judged once (a larger --time-limit; a worker that did not answer; or a "
                   "rebalance: ask again)", err=True)
        sys.exit(3)


def _previewing(url: str, document: dict[str, Any], token: str, time_limit: float,
                count: int) -> dict[str, Any]:
    """:func:`~stream_app.client.worker_api.preview` in a thread, with a spinner and the
    seconds waited on stderr (on a terminal)."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from rich.console import Console

    from stream_app.client.worker_api import preview

    console = Console(stderr=True)
    started = time.monotonic()
    what = f"previewing {count} audience{'s' if count != 1 else ''} at {url}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(preview, url, document, token, time_limit)
        with console.status(what) as status:
            while not wait([future], timeout=0.2).done:
                status.update(f"{what}: {time.monotonic() - started:.0f} s "
                              f"(at most {time_limit:g} s)")
        return future.result()


@main.command()
@settings_options((*COMMON[:2], ("--erasure-topic", "ERASURE_TOPIC", "Erasure request topic.")))
@click.argument("customer_ids", nargs=-1, required=True)
def forget(customer_ids: tuple[str, ...]) -> None:
    """Right to be forgotten: erase each CUSTOMER_ID from the workers' state.

    Sends an erasure request (keyed by the id) to the erasure topic; the worker owning the
    customer deletes its state everywhere and publishes a last segment change with
    segment null and trigger "erasure".
    """
    from stream_app.client.erasure import request_erasure

    settings = load_settings()
    sent = run_kafka(request_erasure(settings.bootstrap_servers, settings.erasure_topic,
                                     list(customer_ids)), settings)
    for s in sent:
        click.echo(f"erasure of {s.customer_id} requested: {settings.erasure_topic} "
                   f"partition {s.partition} offset {s.offset} (request {s.request_id})")


#: After Ctrl-C or SIGTERM, how long ``watch`` may take to stop cleanly (its last commit
#: waits up to 10 s) before it exits anyway.
WATCH_STOP_GRACE_S = 15.0


def stop_on_signals(task: asyncio.Task[Any], grace_s: float, name: str) -> None:
    """Cancel ``task`` on SIGINT or SIGTERM, again on each further one (a cancellation a
    client library swallowed is repeated), and exit with status 0 ``grace_s`` after the
    first in any case, writing the task's and every thread's stack to stderr (where it was
    stuck)."""
    import faulthandler
    import threading

    loop = asyncio.get_running_loop()
    deadline: list[threading.Timer] = []

    def give_up() -> None:
        sys.stderr.write(f"{name}: did not stop within {grace_s:g} s of the signal; "
                         "exiting anyway. Where it was:\n")
        try:
            task.print_stack(file=sys.stderr)
        except Exception as exc:  # read from another thread: best effort
            sys.stderr.write(f"(no task stack: {exc!r})\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(0)

    def stop() -> None:
        task.cancel()
        if not deadline:
            deadline.append(threading.Timer(grace_s, give_up))
            deadline[0].daemon = True
            deadline[0].start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


@main.command()
@settings_options((COMMON[0], COMMON[5], ("--audience-changes-topic", "AUDIENCE_CHANGES_TOPIC",
                                          "Output topic of audience changes."),
                   ("--catalogue-topic", "SEGMENT_CATALOGUE_TOPIC", "The segment catalogue.")))
@click.option("--segment", "segments", type=int, multiple=True, metavar="ID",
              help="Only changes into or out of this segment (with --audiences: of customers "
                   "in it). Repeatable.")
@click.option("--trigger", "triggers", multiple=True,
              type=click.Choice(list(dict.fromkeys(
                  (*trigger_names(SegmentChangeEvent.SCHEMA),
                   *trigger_names(AudienceChangeEvent.SCHEMA))))),
              help="Only changes with this trigger (definitions: --audiences only). Repeatable.")
@click.option("--from-beginning", is_flag=True,
              help="Start at the oldest retained change (default: only new ones; with "
                   "--group-id: where the group stopped).")
@click.option("--json", "as_json", is_flag=True,
              help="Print each message exactly as published, one JSON object per line.")
@click.option("--audiences", "follow_audiences", is_flag=True,
              help="Follow audience changes (AUDIENCE_CHANGES_TOPIC) instead.")
@click.option("--audience", "audience_names", multiple=True, metavar="NAME",
              help="With --audiences: only this audience. Repeatable.")
@click.option("--action", "actions", multiple=True, type=click.Choice(["enter", "exit"]),
              help="With --audiences: only entries, or only exits.")
@click.option("--catalogue", "follow_catalogue", is_flag=True,
              help="Follow the segment catalogue (SEGMENT_CATALOGUE_TOPIC) instead: what each "
                   "model version changed in the segments' meaning. --segment keeps the "
                   "messages about a segment (or naming it).")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(list(trigger_names(CatalogueChangeEvent.SCHEMA, "kind"))),
              help="With --catalogue: only this kind of change. Repeatable.")
@click.option("--group-id", default=None,
              help="Read as a member of this consumer group and commit what was shown, so a "
                   "restart goes on from there (default: no group, nothing committed).")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after showing N changes.")
def watch(segments: tuple[int, ...], triggers: tuple[str, ...], from_beginning: bool,
          as_json: bool, follow_audiences: bool, audience_names: tuple[str, ...],
          actions: tuple[str, ...], follow_catalogue: bool, kinds: tuple[str, ...],
          group_id: str | None, count: int | None) -> None:
    """Follow the segment changes (with --audiences, the audience changes; with
    --catalogue, the segment catalogue) as they are published: one readable line per
    change (event time in UTC), or --json.

    Ctrl-C stops it (status 0, within 15 s in any case); status 1 when no broker answers
    within 10 s.
    """
    import logging

    from stream_app.client.subscribe import (
        BrokerUnreachable,
        subscribe,
        subscribe_audiences,
        subscribe_catalogue,
    )
    from stream_app.worker.connectivity import KAFKA_CLIENT_LOGGERS, RepeatFilter

    settings = load_settings()
    if (audience_names or actions) and not follow_audiences:
        raise click.UsageError("--audience and --action need --audiences")
    if kinds and not follow_catalogue:
        raise click.UsageError("--kind needs --catalogue")
    if follow_catalogue and (follow_audiences or triggers):
        raise click.UsageError("--catalogue goes with neither --audiences nor --trigger")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="stream-app watch: %(levelname)s %(name)s: %(message)s")
    repeats = RepeatFilter()  # a broker outage: each client warning once per 30 s
    for name in KAFKA_CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(repeats)
    chosen: dict[str, Any] = {"segments": segments or None, "triggers": triggers or None,
                              "from_beginning": from_beginning, "group_id": group_id}
    try:
        subscription: Any = (
            subscribe_catalogue(settings.bootstrap_servers,
                                topic=settings.segment_catalogue_topic,
                                segments=segments or None, kinds=kinds or None,
                                from_beginning=from_beginning, group_id=group_id)
            if follow_catalogue else
            subscribe_audiences(settings.bootstrap_servers,
                                topic=settings.audience_changes_topic,
                                audiences=audience_names or None, actions=actions or None,
                                **chosen)
            if follow_audiences else
            subscribe(settings.bootstrap_servers, topic=settings.segment_changes_topic,
                      **chosen))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    colours = {"enter": "green", "exit": "red", "erasure": "yellow", "consent": "yellow",
               "created": "green", "revived": "green", "retired": "red", "merged": "red",
               "relabelled": "yellow"}

    async def show() -> None:
        task = asyncio.current_task()
        assert task is not None
        stop_on_signals(task, WATCH_STOP_GRACE_S, "stream-app watch")
        shown = 0
        async with subscription:
            async for change in subscription:
                if as_json:
                    click.echo(change.raw_json)
                else:
                    colour = colours.get(getattr(change, "action", change.trigger))
                    click.echo(click.style(change.summary(), fg=colour))
                shown += 1
                if count is not None and shown >= count:
                    await subscription.commit()  # shown: a group goes on after it
                    break

    try:
        asyncio.run(show())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except BrokerUnreachable as exc:
        raise click.ClickException(f"{exc}. Check KAFKA_BOOTSTRAP_SERVERS or --bootstrap.") \
            from None
    if subscription.malformed:
        click.echo(f"stream-app watch: skipped {subscription.malformed} malformed "
                   f"message(s) (see the warnings above)", err=True)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default=None,
              help="A worker's HTTP address (default: http://127.0.0.1:$WEB_PORT).")
@click.option("--max-rows", default=50, show_default=True, help="Mismatches to print.")
@click.option("--token", default="", envvar="API_TOKEN", show_envvar=True,
              help="The worker's API token (Authorization: Bearer), when it has one.")
def verify(file: Path, url: str | None, max_rows: int, token: str) -> None:
    """Compare a running worker's features with a batch recomputation of FILE (JSONL).

    Exits 1 if any customer's feature differs (counts and money exactly, ratios to 1e-9);
    2 with one line if the worker cannot be reached or refuses the token (401).
    """
    from stream_app.tools.verify import WorkerAccessError, run

    settings = load_settings()
    url = url or f"http://127.0.0.1:{settings.web_port}"
    try:
        code = run(file, url, lateness_ms=int(settings.allowed_lateness_s * 1000),
                   max_rows=max_rows, token=token)
    except WorkerAccessError as exc:
        click.echo(f"stream-app verify: {exc}", err=True)
        sys.exit(exc.status)
    sys.exit(code)


@main.command()
@click.argument("customer_id")
@click.option("--url", default=None,
              help="A worker's HTTP address; any worker answers (default: "
                   "http://127.0.0.1:$WEB_PORT).")
@click.option("--token", default="", envvar="API_TOKEN", show_envvar=True,
              help="The worker's API token (Authorization: Bearer), when it has one.")
@click.option("--json", "as_json", is_flag=True, help="Print the worker's document as JSON.")
def explain(customer_id: str, url: str | None, token: str, as_json: bool) -> None:
    """Why CUSTOMER_ID is where it is: its segment in plain words, how near the other
    segments are and what a move would take, its last changes and why, and every audience
    clause by clause (GET /customers/{id}/explain).

    Status 1 with one line if the worker does not know the customer, 2 if the worker cannot
    be reached or refuses the token.
    """
    from stream_app.client.worker_api import (
        WorkerAccessError,
        WorkerError,
        explain_text,
    )
    from stream_app.client.worker_api import explain as fetch_explanation

    url = url or f"http://127.0.0.1:{load_settings().web_port}"
    try:
        doc = fetch_explanation(url, customer_id, token=token)
    except WorkerAccessError as exc:
        click.echo(f"stream-app explain: {exc}", err=True)
        sys.exit(exc.status)
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from None
    if doc is None:
        click.echo(f"stream-app explain: the worker at {url} does not know customer "
                   f"{customer_id!r}", err=True)
        sys.exit(1)
    if as_json:
        import orjson

        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(explain_text(doc))


@main.command()
@click.option("--url", "urls", multiple=True,
              help="A worker's HTTP address; repeat for every worker "
                   "(default: http://127.0.0.1:$WEB_PORT).")
@click.option("--window", default=30.0, show_default=True,
              help="Seconds over which churn is measured.")
@click.option("--planted-customers", type=int, default=None,
              help="Customers of the generator run feeding the workers (for the ARI).")
@click.option("--planted-seed", type=int, default=7, show_default=True,
              help="Seed of that generator run.")
@click.option("--offline", is_flag=True,
              help="Simulate the whole loop in-process, once per River clusterer, and "
                   "compare them (settings from the environment).")
@click.option("--customers", default=2000, show_default=True, help="--offline: customers.")
@click.option("--events", default=80_000, show_default=True,
              help="--offline: events (planted workload; a retail history is replayed whole).")
@click.option("--profile", "workload", default="planted", show_default=True,
              type=click.Choice(PROFILES),
              help="--offline: the workload (planted types, or a retail history).")
@click.option("--k", "k", default=4, show_default=True, help="--offline: segments.")
@click.option("--seed", default=7, show_default=True, help="--offline: generator seed.")
@click.option("--clusterers", default=",".join(CLUSTERERS), show_default=True,
              help="--offline: which clusterers, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--token", default="", envvar="API_TOKEN", show_envvar=True,
              help="Live: the workers' API token (Authorization: Bearer), when they have one "
                   "(--planted-customers reads customers).")
def evaluate(urls: tuple[str, ...], window: float, planted_customers: int | None,
             planted_seed: int, offline: bool, customers: int, events: int, workload: str,
             k: int, seed: int, clusterers: str, as_json: bool, token: str) -> None:
    """Segment quality: homogeneity, separation, silhouette, WCSS vs batch k-means, churn,
    flap rate, and the adjusted Rand index against the generator's planted types.

    Live, status 2 with one line if a worker cannot be reached or refuses the token.
    """
    import orjson

    from stream_app.tools import evaluate as ev
    from stream_app.tools.verify import WorkerAccessError

    if offline:
        names = list(_choices(clusterers, CLUSTERERS, "--clusterers"))
        rows = ev.evaluate_offline(customers, events, k, seed, names, load_settings(),
                                   progress=None if as_json else
                                   lambda name: click.echo(f"learning with {name} ...",
                                                           err=True), profile=workload)
        if as_json:
            click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        else:
            ev.print_offline(rows)
        return
    settings = load_settings()
    urls = urls or (f"http://127.0.0.1:{settings.web_port}",)
    planted = (planted_customers, planted_seed) if planted_customers else None
    try:
        report = ev.evaluate_live(list(urls), window, planted, token=token)
    except WorkerAccessError as exc:
        click.echo(f"stream-app evaluate: {exc}", err=True)
        sys.exit(exc.status)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        ev.print_live(report)


@main.command()
@click.option("--customers", default=2000, show_default=True, help="Number of customers.")
@click.option("--rate", default=300.0, show_default=True, help="Generated events per second.")
@click.option("--port", default=9092, show_default=True,
              help="Broker port (a free one is used if taken).")
@click.option("--web-port", default=6066, show_default=True,
              help="Worker HTTP port (a free one is used if taken).")
@click.option("--segments-k", default=16, show_default=True, help="Number of micro-segments.")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: Ctrl-C).")
@click.option("--plain", is_flag=True, help="Print plain lines instead of a live screen.")
@click.option("--audiences", "audiences_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Audience definitions for the worker (default: examples/audiences.yaml "
                   "of a source checkout).")
def demo(customers: int, rate: float, port: int, web_port: int, segments_k: int,
         duration: float, plain: bool, audiences_file: Path | None) -> None:
    """Broker + worker + generator, with live segment changes in the terminal."""
    from stream_app.tools.demo import EXAMPLE_AUDIENCES, Demo

    if audiences_file is None and EXAMPLE_AUDIENCES.is_file():
        audiences_file = EXAMPLE_AUDIENCES
    code = Demo(customers=customers, rate=rate, port=port, web_port=web_port,
                segments_k=segments_k, duration=duration, plain=plain,
                audiences=audiences_file).run()
    sys.exit(code)


@main.command()
@click.option("--events", default=200_000, show_default=True,
              help="Messages pre-produced and read by every mode.")
@click.option("--customers", default=20_000, show_default=True, help="Customers in them.")
@click.option("--partitions", default=4, show_default=True, help="Partitions of each topic.")
@click.option("--k", "k", default=32, show_default=True, help="Segments (SEGMENTS_K).")
@click.option("--store", type=click.Choice(["memory", "rocksdb"]), default="memory",
              show_default=True, help="Table store of the worker (app mode).")
@click.option("--latency-seconds", default=30.0, show_default=True,
              help="Duration of the latency phase (half the app's rate offered).")
@click.option("--latency-rate", default=0.0,
              help="Events/s offered in the latency phase (default: half the app's rate).")
@click.option("--seed", default=7, show_default=True, help="Generator seed.")
@click.option("--events-per-message", default=1, show_default=True,
              help="Messages of up to this many consecutive events of one customer, as a "
                   "JSON array (1: one event per message).")
@click.option("--single-record-batches", is_flag=True,
              help="Faust producers send one record per batch, as on the embedded broker "
                   "outside the benchmark (PRODUCER_BATCHING=auto).")
@click.option("--sweep", is_flag=True,
              help="Scaling curves instead: the worker alone at --sweep-customers (each "
                   "with --sweep-events-per-customer events, at least --events in all) per "
                   "--sweep-stores, and at --sweep-k on the base workload.")
@click.option("--sweep-customers", default="10000,100000,1000000", show_default=True)
@click.option("--sweep-k", default="8,32,128", show_default=True)
@click.option("--sweep-stores", default="memory,rocksdb", show_default=True)
@click.option("--sweep-events-per-customer", default=2, show_default=True)
@click.option("--modes", default="ceiling,direct,naive,app", show_default=True,
              help="Which modes to measure, comma-separated (latency needs app).")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Results (JSON)  [default: bench-results.json, bench-sweep.json]")
def bench(events: int, customers: int, partitions: int, k: int, store: str,
          latency_seconds: float, latency_rate: float, seed: int, events_per_message: int,
          single_record_batches: bool, sweep: bool, sweep_customers: str, sweep_k: str,
          sweep_stores: str, sweep_events_per_customer: int, modes: str,
          out: Path | None) -> None:
    """Throughput of the worker against a plain consumer, a minimal Faust app and our own
    code without Faust, then its latency; own embedded broker, results as JSON."""
    from stream_app.tools.bench import MODES, BenchConfig, BenchError, SweepConfig, run
    from stream_app.tools.bench import sweep as run_sweep

    chosen = _choices(modes, MODES, "--modes")
    if min(events, customers, partitions, events_per_message) < 1 or latency_seconds <= 0:
        raise click.UsageError("--events, --customers, --partitions, --events-per-message "
                               "and --latency-seconds must be positive")
    cfg = BenchConfig(events=events, customers=customers, partitions=partitions, k=k,
                      store=store, seed=seed, latency_seconds=latency_seconds,
                      latency_rate=latency_rate,
                      out=out or Path("bench-sweep.json" if sweep else "bench-results.json"),
                      modes=chosen, single_record_batches=single_record_batches,
                      events_per_message=events_per_message)
    try:
        if sweep:
            grid = SweepConfig(customers=_ints(sweep_customers, "--sweep-customers"),
                               ks=_ints(sweep_k, "--sweep-k"),
                               stores=_choices(sweep_stores, ("memory", "rocksdb"),
                                               "--sweep-stores"),
                               events_per_customer=sweep_events_per_customer)
            run_sweep(cfg, grid)
        else:
            run(cfg)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--minutes", default=10.0, show_default=True, help="Duration of the steady load.")
@click.option("--rate", default=0.0,
              help="Events/s offered (default: --fraction of the maximum measured first).")
@click.option("--fraction", default=0.8, show_default=True,
              help="Share of the measured maximum offered.")
@click.option("--warm-events", default=100_000, show_default=True,
              help="Events pre-produced to measure the maximum (and give every customer "
                   "a state).")
@click.option("--customers", default=20_000, show_default=True, help="Customers.")
@click.option("--partitions", default=4, show_default=True, help="Partitions of each topic.")
@click.option("--k", "k", default=32, show_default=True, help="Segments (SEGMENTS_K).")
@click.option("--seed", default=7, show_default=True, help="Generator seed.")
@click.option("--invalid-share", default=0.01, show_default=True,
              help="Share of invalid messages in the load (each one a dead letter).")
@click.option("--sample-seconds", default=5.0, show_default=True,
              help="Interval of the samples (lag, RSS, events/s, latency).")
@click.option("--max-lag-seconds", default=2.0, show_default=True,
              help="Check: the lag never exceeds this many seconds of offered input.")
@click.option("--max-p99-ms", default=1000.0, show_default=True,
              help="Check: the p99 end-to-end latency over the load is at most this.")
@click.option("--p99-flat-ratio", default=1.2, show_default=True,
              help="Check: the last minute's p99 is at most this many times the first "
                   "settled minute's (loads of 3 minutes or more).")
@click.option("--max-changes-per-event", default=0.05, show_default=True,
              help="Check: segment changes per offered event (a mature population).")
@click.option("--rss-tolerance", default=0.10, show_default=True,
              help="Check: RSS grows by at most this fraction after the warm-up.")
@click.option("--single-record-batches", is_flag=True,
              help="The worker's producer sends one record per batch "
                   "(PRODUCER_BATCHING=off, the embedded broker's default).")
@click.option("--rocksdb-block-cache-mb", type=int, default=None,
              help="The worker's ROCKSDB_BLOCK_CACHE_MB (per table partition; default: "
                   "the setting's default).")
@click.option("--out", default=Path("soak-results.json"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Results (JSON).")
def soak(minutes: float, rate: float, fraction: float, warm_events: int, customers: int,
         partitions: int, k: int, seed: int, invalid_share: float, sample_seconds: float,
         max_lag_seconds: float, max_p99_ms: float, p99_flat_ratio: float,
         max_changes_per_event: float, rss_tolerance: float, single_record_batches: bool,
         rocksdb_block_cache_mb: int | None, out: Path) -> None:
    """A steady load at 80 % of the worker's measured maximum for --minutes (own embedded
    broker, RocksDB): checks lag, p99 latency (bounded, flat per minute), memory and that
    nothing is lost; exits 1 if one fails."""
    from stream_app.tools.bench import BenchError
    from stream_app.tools.soak import SoakConfig, run

    if min(minutes, warm_events, customers, partitions, sample_seconds) <= 0 or rate < 0:
        raise click.UsageError("--minutes, --warm-events, --customers, --partitions and "
                               "--sample-seconds must be positive, --rate not negative")
    if not (0 < fraction <= 1 and 0 <= invalid_share < 1):
        raise click.UsageError("--fraction must be in (0, 1], --invalid-share in [0, 1)")
    cfg = SoakConfig(minutes=minutes, rate=rate, fraction=fraction, warm_events=warm_events,
                     customers=customers, partitions=partitions, k=k, seed=seed,
                     invalid_share=invalid_share, sample_s=sample_seconds,
                     max_lag_s=max_lag_seconds, max_p99_ms=max_p99_ms,
                     p99_flat_ratio=p99_flat_ratio,
                     max_changes_per_event=max_changes_per_event, rss_tolerance=rss_tolerance,
                     single_record_batches=single_record_batches,
                     rocksdb_block_cache_mb=rocksdb_block_cache_mb, out=out)
    try:
        doc = run(cfg)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if doc["passed"] else 1)


@main.command("broker-probe")
@click.option("--steps", default=6, show_default=True, type=click.IntRange(min=1),
              help="Fills of the log, each followed by the steady load.")
@click.option("--fill", default=150_000, show_default=True, type=click.IntRange(min=1),
              help="Records added to the log before each step.")
@click.option("--batch-records", default=50, show_default=True, type=click.IntRange(min=1),
              help="Records per producer batch of the fill.")
@click.option("--rate", default=1200.0, show_default=True, type=click.FloatRange(min=1),
              help="Records/s of the steady load.")
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds of steady load per step.")
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--fetch-max-wait-ms", default=None, type=click.IntRange(min=0),
              help="The reader's fetch wait (default: the worker's on the embedded broker).")
@click.option("--fetch-min-bytes", default=1, show_default=True, type=click.IntRange(min=1),
              help="The reader's minimum fetch size.")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Results (JSON).")
def broker_probe(steps: int, fill: int, batch_records: int, rate: float, seconds: float,
                 partitions: int, fetch_max_wait_ms: int | None, fetch_min_bytes: int,
                 out: Path | None) -> None:
    """What the same steady load costs the embedded broker as its log grows (its own
    broker; no worker): broker CPU and produce-to-fetch delay per step."""
    from stream_app.tools.broker_probe import ProbeConfig, run
    from stream_app.worker.broker import TANSU_FETCH_MAX_WAIT_MS

    wait = TANSU_FETCH_MAX_WAIT_MS if fetch_max_wait_ms is None else fetch_max_wait_ms
    run(ProbeConfig(steps=steps, fill=fill, batch_records=batch_records, rate=rate,
                    seconds=seconds, partitions=partitions, fetch_max_wait_ms=wait,
                    fetch_min_bytes=fetch_min_bytes, out=out))


def _choices(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma-separated option's values, in the order given, each one of ``allowed``."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(allowed)}",
                                 param_hint=option)
    return names


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.UsageError(f"{option}: comma-separated integers") from None
    if min(values) < 1:
        raise click.UsageError(f"{option}: positive integers")
    return values


if __name__ == "__main__":
    main()
