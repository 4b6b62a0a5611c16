"""Logging: structlog everywhere, one event name per line, phone numbers always masked.

Masking is a processor, applied to every field of every line (and to stdlib records from
arq, asyncpg or twilio, which are routed through the same processors), so no call site has
to remember it.

Quiet by design (docs/operations.md#logs): arq's free-text lines become events
(``job.started``, ``job.finished``, ``job.deferred`` at DEBUG; ``job.failed``,
``job.interrupted`` and the like at WARNING or ERROR; its shutdown lines go), and every line
logged while a job runs, arq's included, carries the job's ``call``, ``alert`` and
``alert_id`` (``job_scope``, ``bind_job``). Ids have one name everywhere: ``call`` (calls.id),
``alert`` (alerts.id), ``alert_id`` and ``tenant`` (the event's), ``stream_id``, ``sid`` (the
provider's), ``consumer``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal

import structlog

# E.164 and the common ways people write numbers: "+1 415 555 0100", "(415) 555-0100",
# "415.555.0100", bare 10–11 digit runs. Bare runs are matched only when not part of a
# longer token, so stream ids (1700000000000-0) and timestamps keep their digits.
_PHONE_RE = re.compile(
    r"""
    (?<![\w+])
    (?:
        \+\d[\d\s().-]{6,20}\d              # international, with or without separators
      | \(\d{3}\)\s?\d{3}[\s.-]\d{4}        # (415) 555-0100
      | \d{3}[\s.-]\d{3}[\s.-]\d{4}         # 415-555-0100
      | \d{10,11}                           # 4155550100
    )
    (?![\w-])
    """,
    re.VERBOSE,
)


def _mask_match(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if len(digits) < 7:
        return text
    head = ("+" if text.startswith("+") else "") + digits[:4]
    return f"{head}•••{digits[-4:]}"


# A number URL-encoded inside a provider's message or a URL (``To=%2B14155550100``,
# ``%2B1%20415%20555%200100``): the ``+`` is ``%2B``, a space ``%20`` or ``+``.
_ENCODED_PHONE_RE = re.compile(r"%2[Bb]\d(?:\d|%20|[+().-]){6,30}\d(?!\d)")


def _mask_encoded(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0).replace("%20", "")[3:])
    return f"+{digits[:4]}•••{digits[-4:]}"


def mask_phone_numbers(text: str) -> str:
    """``text`` with every phone-number-like run (URL-encoded too) shown as
    ``+1415•••0100``."""
    return _PHONE_RE.sub(_mask_match, _ENCODED_PHONE_RE.sub(_mask_encoded, text))


def mask_document(value: Any) -> Any:
    """A JSON-like document with the phone numbers of every string masked (a human view
    of what ``--json`` shows whole)."""
    return _mask_value(value)


# Values with nothing to mask, by exact type: most fields are ids and counts, and checking
# them first spares each one the isinstance checks below (ABC checks for Mapping among them).
_PLAIN = frozenset({int, float, bool, type(None)})
# Every pattern above needs at least two digits (the encoded one three): a string with fewer
# cannot change, and most field values (statuses, names, event names) have none.
_NOT_DIGITS = str.maketrans("", "", "0123456789")


def _mask_string(text: str) -> str:
    if type(text) is str and len(text) - len(text.translate(_NOT_DIGITS)) < 2:
        return text  # (a str subclass, such as a status enum, still becomes a plain str)
    return mask_phone_numbers(text)


def _mask_value(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, str):
        return _mask_string(value)
    if isinstance(value, Mapping):
        return {key: _mask_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_mask_value(item) for item in value]
    if isinstance(value, BaseException):
        return mask_phone_numbers(f"{type(value).__name__}: {value}")
    if value is None or isinstance(value, bool | int | float):
        return value
    # Any other object (a Member, a dataclass) would be rendered with repr() after this
    # processor has run: render it here so its phone numbers are masked too.
    return mask_phone_numbers(repr(value))


def mask_phone_numbers_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        kind = type(value)
        if kind in _PLAIN:
            continue  # most fields are ids and counts: nothing to mask, nothing to assign
        if kind is str and len(value) - len(value.translate(_NOT_DIGITS)) < 2:
            continue  # fewer than two digits: no pattern can match (_mask_string)
        event_dict[key] = _mask_value(value)
    return event_dict


def _mask_rendered(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Tracebacks are rendered late (format_exc_info); mask them after rendering too.
    for key in ("exception", "stack"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = mask_phone_numbers(event_dict[key])
    return event_dict


# --- the job scope: every line a job causes names its call and alert -----------------------

# One dict per running job, shared by arq's run_job task (which logs job.started/finished)
# and the job's own task (a copy of run_job's context refers to the same dict), so what the
# job learns (its alert) also labels arq's line about how the job ended.
_JOB_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "voicealert_job_fields", default=None
)


def job_scope(**fields: Any) -> None:
    """Start the log scope of a job (called when arq starts it, in arq's job task)."""
    _JOB_FIELDS.set({k: v for k, v in fields.items() if v is not None})


def bind_job(**fields: Any) -> None:
    """Add fields (``alert``, ``alert_id``) to every later line of the running job."""
    scope = _JOB_FIELDS.get()
    if scope is not None:
        scope.update({k: v for k, v in fields.items() if v is not None})


def _add_job_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    scope = _JOB_FIELDS.get()
    if scope:
        for key, value in scope.items():
            event_dict.setdefault(key, value)
    return event_dict


# --- arq's free-text lines as events ---------------------------------------------------------

# arq 0.28's format strings (pinned: tests/unit/test_logs.py reads them from arq's source) →
# the event they become, its level, and the names of their arguments. None: dropped.
_ArqRule = tuple[str, int, tuple[str, ...]] | None
_ARQ_LINES: dict[str, _ArqRule] = {
    "%6.2fs → %s(%s)%s": ("job.started", logging.DEBUG, ("queued_s", "ref", "args", "extra")),
    "%6.2fs ← %s ● %s": ("job.finished", logging.DEBUG, ("duration_s", "ref", "result")),
    "%6.2fs ↻ %s retrying job in %0.2fs": (
        "job.deferred", logging.DEBUG, ("duration_s", "ref", "retry_in_s")),
    "%6.2fs ↻ %s cancelled, will be run again": (
        "job.interrupted", logging.WARNING, ("duration_s", "ref")),
    "%6.2fs ⊘ %s aborted": ("job.aborted", logging.WARNING, ("duration_s", "ref")),
    "%6.2fs ⊘ %s:%s aborted before start": (
        "job.aborted", logging.WARNING, ("queued_s", "job_id", "function")),
    "%6.2fs ! %s failed, %s: %s": (
        "job.failed", logging.ERROR, ("duration_s", "ref", "error_type", "error")),
    "%6.2fs ! %s max retries %d exceeded": (
        "job.max_tries_exceeded", logging.ERROR, ("queued_s", "ref", "max_tries")),
    "job %s expired": ("job.expired", logging.WARNING, ("job_id",)),
    "deserializing job %s failed": ("job.unreadable", logging.ERROR, ("job_id",)),
    "job %s, function %r not found": ("job.unknown_function", logging.ERROR,
                                      ("job_id", "function")),
    "Starting worker for %d functions: %s": ("arq.started", logging.DEBUG,
                                             ("functions", "names")),
    "recording health: %s": None,
    "Setting allow_pick_jobs to `False`": None,
    # The counters are in worker.stopped; "on SIGUSR1" is arq closing itself, not a signal.
    "shutdown on %s ◆ %d jobs complete ◆ %d failed ◆ %d retries ◆ %d ongoing to cancel": None,
    "shutdown on %s ◆ %d jobs complete ◆ %d failed ◆ %d retries ◆ %d to be completed": None,
    "shutdown on %s, wait complete ◆ %d jobs complete ◆ %d failed ◆ %d retries ◆ %d ongoing "
    "to cancel": None,
}
_ARQ_FIELDS = "voicealert_fields"


class _ArqLines(logging.Filter):
    """Rewrites arq's records into events with fields, at the level the event deserves."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("arq"):
            return True
        template = record.msg if isinstance(record.msg, str) else ""
        if template not in _ARQ_LINES:
            if template.startswith("redis_version="):  # arq's connection banner
                return self.level <= logging.DEBUG
            return record.levelno >= self.level
        rule = _ARQ_LINES[template]
        if rule is None:
            return False
        event, level, names = rule
        if level < self.level:
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        fields = _arq_fields(dict(zip(names, args, strict=False)))
        record.msg, record.args = event, ()
        record.levelno, record.levelname = level, logging.getLevelName(level)
        setattr(record, _ARQ_FIELDS, fields)
        return True


def _arq_fields(raw: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "ref":  # "<job id>:<function>"
            job_id, _, function = str(value).rpartition(":")
            fields["job_id"], fields["function"] = job_id, function
        elif key == "extra":  # " try=3 delayed=1.20s"
            for part in str(value).split():
                name, _, number = part.partition("=")
                fields[name] = number.removesuffix("s")
        elif key in ("args", "result") or value in ("", None):
            continue  # the call id is in the job id; results are logged by our own events
        elif isinstance(value, float):
            fields[key] = round(value, 3)
        else:
            fields[key] = value if isinstance(value, int | str) else str(value)
    return fields


def _add_record_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    fields = getattr(record, _ARQ_FIELDS, None)
    if isinstance(fields, dict):
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


class _Output:
    """Where our own lines go and how they are rendered: set by ``configure_logging``, read
    at every line (loggers are built once and cached, and may outlive a reconfiguration)."""

    stream: Any = sys.stderr
    renderer: Any = None
    lock = threading.Lock()


def _render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return _Output.renderer(logger, method, event_dict)


class _DirectLogger:
    """What structlog hands our own lines to once rendered: written straight to the output
    stream, without the stdlib record, handler and second formatting pass they used to go
    through (half of a line's cost). Whether a level is on is still the stdlib logger's
    answer for the same name, so levels are set as before."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)

    @property
    def disabled(self) -> bool:
        return self._stdlib.disabled

    def isEnabledFor(self, level: int) -> bool:
        return self._stdlib.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:
        return self._stdlib.getEffectiveLevel()

    def _write(self, line: str) -> None:
        with _Output.lock:
            try:
                stream = _Output.stream
                stream.write(line + "\n")
                stream.flush()
            except RecursionError:
                raise
            except Exception:
                # As logging.StreamHandler does: an output that broke (a closed pipe) never
                # breaks the code that logs; the error is reported on stderr.
                _report_logging_error()

    debug = info = warning = error = critical = exception = _write


def _report_logging_error() -> None:
    if not (logging.raiseExceptions and sys.stderr):
        return
    try:
        sys.stderr.write("--- Logging error ---\n")
        traceback.print_exc(file=sys.stderr)
    except OSError:
        pass


def _direct_logger(*args: Any) -> _DirectLogger:
    return _DirectLogger(str(args[0]) if args else "root")


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: Any = None,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) with masking applied."""
    out = stream or sys.stderr
    on_terminal = _is_terminal(out)
    use_json = fmt == "json" or (fmt == "auto" and not on_terminal)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_job_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        mask_phone_numbers_processor,
        # After masking (a timestamp never holds a number, and masking it cost a regex pass
        # per line); nothing is added between, so the fields keep their order in the output.
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    foreign: list[Any] = [_add_record_fields, *shared]
    renderer: Any
    tail: list[Any] = [structlog.processors.format_exc_info, _mask_rendered]
    if use_json:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=on_terminal)
    _Output.stream, _Output.renderer = out, renderer
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, *tail, _render],
        logger_factory=_direct_logger,
        wrapper_class=structlog.stdlib.BoundLogger,
        # Build each module's logger once, not on every line: the chain above is the same at
        # every call of configure_logging (the output, renderer and level are read at each
        # line: _Output, the stdlib logger), so a logger built at its first line stays right.
        cache_logger_on_first_use=True,
    )
    # Lines of other libraries (arq, asyncpg, twilio) go through the stdlib: the same
    # processors, the same output.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_ArqLines(logging.getLevelName(level.upper())))
    # arq's records all reach the filter, which decides by the level of the event they become
    # (an INFO "cancelled, will be run again" is a WARNING job.interrupted).
    logging.getLogger("arq").setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # twilio's HTTP client logs request bodies (the To number, the TwiML) at INFO.
    logging.getLogger("twilio").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def _is_terminal(stream: Any) -> bool:
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
