"""The ``voicealert`` command line (docs/contracts.md#the-command-line): the root command,
the process commands (migrate, worker, web) and ``main``.

Each command group lives in a ``cli_<group>`` module and is registered here; what they
share (exit codes, settings, options, the async runner) is ``worker.cli_support``.
Exit codes: 0 success, 1 failure (a service unreachable, a replay that failed again),
2 bad usage or bad input, always with one line on stderr. ``--json`` prints one document.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

import click

from worker.cli_alerts import alerts
from worker.cli_calls import calls
from worker.cli_dlq import dlq
from worker.cli_events import ack, fire, resolve
from worker.cli_groups import groups
from worker.cli_status import status
from worker.cli_support import (
    DATABASE,
    REDIS,
    Failure,
    current_settings,
    run_async,
    with_environment,
)
from worker.cli_tokens import tokens_group
from worker.config import ConfigError, Settings, redact_url
from worker.logs import configure_logging, mask_phone_numbers


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Configuration comes from the environment (docs/contracts.md"
                    "#configuration); each command's --help names the variables it reads.")
@click.version_option(package_name="voicealert", prog_name="voicealert",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """voicealert: rings people when something breaks."""


for command in (groups, fire, resolve, ack, calls, dlq, tokens_group, status, alerts):
    cli.add_command(command)


# --- the processes and the schema ---------------------------------------------------------


@with_environment(DATABASE)
@cli.command()
@run_async
async def migrate() -> None:
    """Create the database if needed and apply pending migrations (safe on every replica)."""
    from worker.migrate import MigrationError
    from worker.migrate import migrate as apply

    settings = current_settings()
    try:
        applied = await apply(settings.database_url)
    except MigrationError as exc:
        raise Failure(str(exc)) from None
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none pending"
    click.echo(f"migrations applied: {names} ({redact_url(settings.database_url)})")


@with_environment("every setting (docs/contracts.md#configuration); --check: "
                  f"{', '.join(REDIS)}, VOICEALERT_CONSUMER_NAME")
@cli.command()
@click.option("--check", is_flag=True,
              help="Do not run: exit 0 if this host's replica is alive, 1 if not (a probe).")
def worker(check: bool) -> None:
    """Run a worker replica: stream consumer plus call jobs (what Procfile runs).

    With --check, a liveness probe: exit 0 while the replica named VOICEALERT_CONSUMER_NAME
    (or, when that is not set, a replica of this host: <hostname>-<pid>) has a live
    heartbeat; exit 1 within one VOICEALERT_HEALTH_CHECK_INTERVAL_S after it died.
    """
    settings = current_settings()
    if check:
        sys.exit(check_worker(settings))
    from worker.app import run_worker

    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_worker(settings))


@run_async
async def check_worker(settings: Settings) -> int:
    import redis.asyncio

    from worker.health import default_consumer_prefix, replicas_on_this_host
    from worker.keys import Keys

    client = redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2,
                                          socket_timeout=5)
    try:
        found = await replicas_on_this_host(client, Keys(settings.redis_prefix), settings)
    finally:
        await client.aclose()
    alive = [r for r in found if r.beat is not None]
    if not alive:
        explicit = "consumer_name" in settings.model_fields_set
        named = (f"consumer {settings.consumer_name}" if explicit
                 else f"a consumer named {default_consumer_prefix()}<pid>")
        raise Failure(f"no live worker replica: no heartbeat from {named}")
    for replica in alive:
        assert replica.beat is not None
        click.echo(f"alive: {replica.consumer} ({replica.beat.doing()})")
    return 0


@with_environment("every setting (docs/contracts.md#configuration)")
@cli.command()
def web() -> None:
    """Run the web process: the HTTP API (/v1), health and readiness, webhooks."""
    from worker.web import run_web

    settings = current_settings()
    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_web(settings))


# --- entry point --------------------------------------------------------------------------


#: The long-running processes (not commands that answer and exit).
_PROCESSES = frozenset({"worker", "web"})
#: An error line quotes what was typed; a 10,000-character argument is cut here.
_LINE_MAX = 300


def _fail(message: str, code: int) -> NoReturn:
    line = " ".join(message.split())
    if len(line) > _LINE_MAX:
        line = line[:_LINE_MAX] + "…"
    # Whatever was typed (invalid UTF-8 arrives as surrogates) prints as something.
    click.echo(f"voicealert: {line.encode('utf-8', 'backslashreplace').decode()}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="voicealert", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        _fail(exc.format_message(), 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except BrokenPipeError:
        # The reader went away (`voicealert calls | head`): stop quietly, as cat does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as exc:
        args = sys.argv[1:] if argv is None else argv
        if any(arg in _PROCESSES for arg in args[:1]):
            raise  # a process's crash keeps its traceback (its logs said what it was doing)
        # The last resort of a command: one line, never a traceback.
        _fail(f"unexpected error: {type(exc).__name__}: {mask_phone_numbers(str(exc))}", 1)
    sys.exit(0)
