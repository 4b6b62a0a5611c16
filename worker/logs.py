"""Logging: structlog everywhere, one event name per line, phone numbers always masked.

Masking is a processor, applied to every field of every line (and to stdlib records from
arq, asyncpg or twilio, which are routed through the same processors), so no call site has
to remember it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
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


def mask_phone_numbers(text: str) -> str:
    """``text`` with every phone-number-like run shown as ``+1415•••0100``."""
    return _PHONE_RE.sub(_mask_match, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_phone_numbers(value)
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


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: Any = None,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) with masking applied."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_phone_numbers_processor,
    ]
    renderer: Any
    tail: list[Any] = [structlog.processors.format_exc_info, _mask_rendered]
    if use_json:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # twilio's HTTP client logs request bodies (the To number, the TwiML) at INFO.
    logging.getLogger("twilio").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
