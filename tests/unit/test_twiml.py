"""TwiML for a call: built by the twilio library, spoken twice, within Twilio's limit."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from worker.twiml import TWIML_MAX_CHARS, alert_twiml


def spoken(twiml: str) -> list[str]:
    root = ET.fromstring(twiml)
    assert {child.tag for child in root} <= {"Say", "Pause"}
    return [child.text or "" for child in root if child.tag == "Say"]


def test_message_is_spoken_twice_after_an_introduction() -> None:
    says = spoken(alert_twiml("Primary database is down"))
    assert says.count("Primary database is down") == 2


@pytest.mark.parametrize("message", ["&" * 1000, "<" * 1000, "a" * 1000, "é" * 1000])
def test_long_messages_that_escape_into_more_characters_fit_twilios_limit(message: str) -> None:
    twiml = alert_twiml(message)
    assert len(twiml) <= TWIML_MAX_CHARS
    says = spoken(twiml)
    assert any(s and set(s) == set(message) for s in says)  # still says (part of) the message


def test_markup_in_the_message_is_spoken_not_obeyed() -> None:
    says = spoken(alert_twiml('</Say><Dial>+19005550100</Dial><Say>'))
    assert "</Say><Dial>+19005550100</Dial><Say>" in says
