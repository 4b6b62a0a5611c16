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


GATHER = "https://alerts.example.com/twilio/gather?call=42"


def test_with_webhooks_the_whole_message_is_inside_a_one_digit_gather() -> None:
    root = ET.fromstring(alert_twiml("Primary database is down", gather_action=GATHER))
    gather, goodbye = list(root)
    assert gather.tag == "Gather"
    assert (gather.get("numDigits"), gather.get("action"), gather.get("method")) == (
        "1", GATHER, "POST")
    says = [child.text for child in gather if child.tag == "Say"]
    # the introduction is inside too: a key pressed during the first sentence counts
    assert says[0] == "This is an alert from voice alert."
    assert says.count("Primary database is down") == 2
    assert says.count("Press 1 to acknowledge.") == 2
    assert (goodbye.tag, goodbye.text) == ("Say", "Goodbye.")


def test_merged_alerts_are_counted_and_spoken_in_order() -> None:
    says = spoken(alert_twiml(["Disk full", "Database down"]))
    assert says[1:4] == ["2 alerts.", "First: Disk full", "Second: Database down"]


@pytest.mark.parametrize("count", [1, 3, 12])
def test_long_merged_messages_with_a_gather_fit_twilios_limit(count: int) -> None:
    twiml = alert_twiml(["&" * 1000] * count, gather_action=GATHER)
    assert len(twiml) <= TWIML_MAX_CHARS
    gather = ET.fromstring(twiml)[0]
    assert gather.tag == "Gather"


def test_speech_settings_choose_intro_voice_and_language() -> None:
    from worker.twiml import Speech

    root = ET.fromstring(alert_twiml("m", speech=Speech(intro="Alerte !", voice="Polly.Lea",
                                                        language="fr-FR")))
    first = root[0]
    assert (first.text, first.get("voice"), first.get("language")) == (
        "Alerte !", "Polly.Lea", "fr-FR")
    assert {say.get("voice") for say in root.iter("Say")} == {"Polly.Lea"}


def test_answers_to_a_keypress_are_valid_twiml_that_hang_up() -> None:
    from worker.twiml import acknowledged_twiml, goodbye_twiml, not_recorded_twiml

    for twiml, said in [(acknowledged_twiml(), "Acknowledged. Thank you."),
                        (not_recorded_twiml(), "could not be recorded"),
                        (goodbye_twiml(), "Goodbye.")]:
        root = ET.fromstring(twiml)
        assert said in " ".join(say.text or "" for say in root.iter("Say"))
        assert root[-1].tag == "Hangup"
