"""The TwiML spoken on a call, built by the twilio library (which escapes every text).

With webhooks (``VOICEALERT_PUBLIC_URL`` set) the whole message sits inside a
``<Gather numDigits="1">``, so a key pressed at any moment, the first sentence included,
reaches the Gather's action (the web process). Without them there is no Gather: nobody could
receive the digit, and a Gather without a reachable action ends the call on Twilio's
"an application error has occurred".

A call may speak several alerts (calls to one number are merged): "2 alerts. First: …
Second: …". Everything fits Twilio's 4,000-character limit on inline TwiML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twilio.twiml.voice_response import Gather, VoiceResponse

from schema import strip_control_characters

# Twilio rejects a `Twiml` parameter longer than this.
TWIML_MAX_CHARS = 4000
INTRO = "This is an alert from voice alert."
PROMPT = "Press 1 to acknowledge."
ACKNOWLEDGED = "Acknowledged. Thank you."
GOODBYE = "Goodbye."
NOT_RECORDED = "Sorry, your answer could not be recorded. You may be called again."
VOICEMAIL_CLOSE = "Please check your alerts."
_ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth",
             "Ninth", "Tenth")


@dataclass(frozen=True)
class Speech:
    """How calls speak (``VOICEALERT_SPEECH_*``): the first line, the voice, the language."""

    intro: str = INTRO
    voice: str = "alice"
    language: str = "en-US"


def _say(parent: VoiceResponse | Gather, text: str, speech: Speech) -> None:
    parent.say(text, voice=speech.voice, language=speech.language)


def _ordinal(index: int) -> str:
    return _ORDINALS[index] if index < len(_ORDINALS) else f"Number {index + 1}"


def _announce(parent: VoiceResponse | Gather, messages: Sequence[str], speech: Speech) -> None:
    if len(messages) == 1:
        _say(parent, messages[0], speech)
        return
    _say(parent, f"{len(messages)} alerts.", speech)
    for index, message in enumerate(messages):
        _say(parent, f"{_ordinal(index)}: {message}", speech)


def _render(
    messages: Sequence[str], speech: Speech, *, repeat: bool, gather_action: str | None
) -> str:
    response = VoiceResponse()
    body: VoiceResponse | Gather = response
    if gather_action is not None:
        body = response.gather(num_digits=1, action=gather_action, method="POST")
    _say(body, speech.intro, speech)
    body.pause(length=1)
    _announce(body, messages, speech)
    if gather_action is not None:
        _say(body, PROMPT, speech)
    if repeat:
        body.pause(length=1)
        _say(body, "I repeat.", speech)
        _announce(body, messages, speech)
        if gather_action is not None:
            _say(body, PROMPT, speech)
    if gather_action is not None:
        _say(response, GOODBYE, speech)  # no key within the Gather's timeout
    return str(response.to_xml())


def _clean(message: str) -> str:
    return " ".join(strip_control_characters(message).split())


def fits(messages: Sequence[str], *, speech: Speech, gather_action: str | None) -> bool:
    """Whether these messages, said once, fit one call without being shortened."""
    texts = [_clean(m) for m in messages]
    rendered = _render(texts, speech, repeat=False, gather_action=gather_action)
    return len(rendered) <= TWIML_MAX_CHARS


def alert_twiml(
    messages: str | Sequence[str], *, speech: Speech = Speech(),
    gather_action: str | None = None,
) -> str:
    """Speak ``messages`` twice (once if twice does not fit), within Twilio's limit.

    Escaping can grow a message (``&`` becomes ``&amp;``), so when even one reading does not
    fit, the longest message is shortened until the document fits.
    """
    texts = [_clean(m) for m in ([messages] if isinstance(messages, str) else messages)]
    for repeat in (True, False):
        twiml = _render(texts, speech, repeat=repeat, gather_action=gather_action)
        if len(twiml) <= TWIML_MAX_CHARS:
            return twiml
    while len(twiml) > TWIML_MAX_CHARS:
        longest = max(range(len(texts)), key=lambda i: len(texts[i]))
        text = texts[longest]
        if len(text) <= 1:
            break  # nothing left to shorten (cannot happen with bounded intro and messages)
        excess = len(twiml) - TWIML_MAX_CHARS
        texts[longest] = text[: max(1, len(text) - excess // 5 - 1)].rstrip() or text[:1]
        twiml = _render(texts, speech, repeat=False, gather_action=gather_action)
    return twiml


def _short(*lines: str, speech: Speech, hang_up: bool = True) -> str:
    response = VoiceResponse()
    for line in lines:
        _say(response, line, speech)
    if hang_up:
        response.hangup()
    return str(response.to_xml())


def acknowledged_twiml(speech: Speech = Speech()) -> str:
    """The answer to a 1: the caller hears that it counted, then the call ends."""
    return _short(ACKNOWLEDGED, speech=speech)


def not_recorded_twiml(speech: Speech = Speech()) -> str:
    """The answer when the keypress could not be recorded (Postgres unreachable): never
    "an application error has occurred", and the truth: others may still be called."""
    return _short(NOT_RECORDED, GOODBYE, speech=speech)


def goodbye_twiml(speech: Speech = Speech()) -> str:
    """The answer to a keypress about a call that no longer exists."""
    return _short(GOODBYE, speech=speech)


def voicemail_twiml(messages: Sequence[str], speech: Speech = Speech()) -> str:
    """A short message for an answering machine: the alerts once, no prompt."""
    texts = [_clean(m) for m in messages]
    response = VoiceResponse()
    _say(response, speech.intro, speech)
    _announce(response, texts, speech)
    _say(response, VOICEMAIL_CLOSE, speech)
    response.hangup()
    twiml = str(response.to_xml())
    return twiml if len(twiml) <= TWIML_MAX_CHARS else _short(speech.intro, VOICEMAIL_CLOSE,
                                                              speech=speech)


def empty_twiml() -> str:
    """The answer to a status callback: nothing to do on the call."""
    return str(VoiceResponse().to_xml())
