"""The ``voicealert`` command line (docs/contracts.md#the-command-line): the root command,
the process commands (migrate, worker, web) and ``main``.

Each command group lives in a ``cli_<group>`` module and is registered here; what they
share (exit codes, settings, options, the async runner) is ``worker.cli_support``.
Exit codes: 0 success, 1 failure (a service unreachable, a replay that failed again),
2 bad usage or bad input, always with one line on stderr. ``--json`` prints one document.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from worker.cli_calls import calls
from worker.cli_dlq import dlq
from worker.cli_events import ack, fire, resolve
from worker.cli_groups import groups
from worker.cli_support import Failure, current_settings, run_async
from worker.cli_tokens import tokens_group
from worker.config import ConfigError, redact_url
from worker.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """voicealert: rings people when something breaks."""


for command in (groups, fire, resolve, ack, calls, dlq, tokens_group):
    cli.add_command(command)


# --- the processes and the schema ---------------------------------------------------------


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


@cli.command()
def worker() -> None:
    """Run a worker replica: stream consumer plus call jobs (what Procfile runs)."""
    from worker.app import run_worker

    settings = current_settings()
    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_worker(settings))


@cli.command()
def web() -> None:
    """Run the web process: the HTTP API (/v1), health and readiness, webhooks."""
    from worker.web import run_web

    settings = current_settings()
    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_web(settings))


# --- entry point --------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"voicealert: {message}", err=True)
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
    sys.exit(0)
