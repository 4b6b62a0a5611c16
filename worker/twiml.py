"""The TwiML spoken on a call, built by the twilio library (which escapes the message)."""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

from schema import strip_control_characters

# Twilio rejects a `Twiml` parameter longer than this.
TWIML_MAX_CHARS = 4000
INTRO = "This is an alert from voice alert."


def _render(message: str, *, repeat: bool) -> str:
    response = VoiceResponse()
    response.say(INTRO, voice="alice", language="en-US")
    response.pause(length=1)
    response.say(message, voice="alice", language="en-US")
    if repeat:
        response.pause(length=1)
        response.say("I repeat.", voice="alice", language="en-US")
        response.say(message, voice="alice", language="en-US")
    return str(response.to_xml())


def alert_twiml(message: str) -> str:
    """Speak ``message`` twice, within Twilio's 4,000-character limit.

    Escaping can grow a message (``&`` becomes ``&amp;``), so a long one is first said once,
    then shortened until the document fits.
    """
    text = " ".join(strip_control_characters(message).split())
    for repeat in (True, False):
        twiml = _render(text, repeat=repeat)
        if len(twiml) <= TWIML_MAX_CHARS:
            return twiml
    while len(twiml) > TWIML_MAX_CHARS:
        text = text[: max(1, len(text) - (len(twiml) - TWIML_MAX_CHARS) // 5 - 1)].rstrip()
        twiml = _render(text, repeat=False)
    return twiml
