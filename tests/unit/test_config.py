"""Contract 2: configuration from the environment, one clear line on a bad value."""

from __future__ import annotations

import pytest

from worker.config import ConfigError, Settings, load_settings, redact_url

TWILIO = {
    "TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000000",
    "TWILIO_AUTH_TOKEN": "tok-SECRET-0123456789",
    "TWILIO_FROM_NUMBER": "+15005550006",
}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    line = str(info.value)
    assert "\n" not in line, f"error is not one line: {line!r}"
    return line


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/voicealert"
    assert settings.twilio_api_base_url == "https://api.twilio.com"
    assert settings.public_url is None
    assert settings.calls_per_second == 1.0
    assert settings.redis_prefix == "voicealert:"


def test_explicit_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOICEALERT_CALLS_PER_SECOND", "7")
    assert load_settings({}).calls_per_second == 1.0


def test_values_are_read_from_their_variables() -> None:
    settings = load_settings({
        "REDIS_URL": "rediss://cache.internal:6380/2",
        "DATABASE_URL": "postgresql://app@db.internal/alerts",
        "VOICEALERT_CALLS_PER_SECOND": "5",
        "VOICEALERT_REDIS_PREFIX": "va:",
        "VOICEALERT_PUBLIC_URL": "https://alerts.example.com",
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9999",
    })
    assert settings.redis_url == "rediss://cache.internal:6380/2"
    assert settings.database_url == "postgresql://app@db.internal/alerts"
    assert settings.calls_per_second == 5.0
    assert settings.redis_prefix == "va:"
    assert settings.public_url == "https://alerts.example.com"
    assert settings.twilio_api_base_url == "http://127.0.0.1:9999"


@pytest.mark.parametrize("rate", ["0.01", "10000"])
def test_call_rate_accepts_its_bounds(rate: str) -> None:
    assert load_settings({"VOICEALERT_CALLS_PER_SECOND": rate}).calls_per_second == float(rate)


def test_process_environment_is_read_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOICEALERT_CALLS_PER_SECOND", "3")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.1:6379/1")
    settings = load_settings()
    assert settings.calls_per_second == 3.0
    assert settings.redis_url == "redis://10.0.0.1:6379/1"


# --- provider selection --------------------------------------------------------------------------


def test_provider_is_simulated_without_twilio_credentials() -> None:
    settings = load_settings({})
    assert settings.provider == "simulated"
    assert settings.provider_name == "simulated"


def test_provider_is_twilio_when_credentials_are_set() -> None:
    settings = load_settings(TWILIO)
    assert settings.provider_name == "twilio"
    assert settings.twilio_auth_token is not None
    assert settings.twilio_auth_token.get_secret_value() == TWILIO["TWILIO_AUTH_TOKEN"]


def test_explicit_simulated_provider_wins_over_credentials() -> None:
    settings = load_settings({**TWILIO, "VOICEALERT_PROVIDER": "simulated"})
    assert settings.provider_name == "simulated"


def test_twilio_provider_without_credentials_names_the_missing_variables() -> None:
    line = config_error({"VOICEALERT_PROVIDER": "twilio"})
    assert "TWILIO_ACCOUNT_SID" in line
    assert "TWILIO_AUTH_TOKEN" in line
    assert "TWILIO_FROM_NUMBER" in line


def test_twilio_sid_without_token_names_the_token() -> None:
    env = {k: v for k, v in TWILIO.items() if k != "TWILIO_AUTH_TOKEN"}
    line = config_error(env)
    assert "TWILIO_AUTH_TOKEN" in line
    assert "TWILIO_ACCOUNT_SID" not in line


def test_from_number_is_normalized_to_e164() -> None:
    settings = load_settings({**TWILIO, "TWILIO_FROM_NUMBER": "+1 500 555 0006"})
    assert settings.twilio_from_number == "+15005550006"


def test_from_number_that_is_not_e164_names_the_variable() -> None:
    line = config_error({**TWILIO, "TWILIO_FROM_NUMBER": "555-0006"})
    assert "TWILIO_FROM_NUMBER" in line
    assert "E.164" in line


# --- bad values: one line naming the variable ----------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VOICEALERT_CALLS_PER_SECOND", "0"),
        ("VOICEALERT_CALLS_PER_SECOND", "-1"),
        ("VOICEALERT_CALLS_PER_SECOND", "fast"),
        ("VOICEALERT_CALLS_PER_SECOND", "10001"),
        ("VOICEALERT_PROVIDER", "vonage"),
        ("VOICEALERT_REDIS_PREFIX", ""),
        ("VOICEALERT_INGEST_BATCH", "0"),
        ("VOICEALERT_LOG_FORMAT", "xml"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/voicealert"),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_variable(variable: str, value: str) -> None:
    assert variable in config_error({variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VOICEALERT_CALLS_PER_SECOND", "0"),
        ("VOICEALERT_PROVIDER", "vonage"),
        ("VOICEALERT_INGEST_BATCH", "0"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/voicealert"),
    ],
)
def test_bad_value_in_the_process_environment_names_the_variable_as_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    line = str(info.value)
    assert variable in line
    assert "VOICEALERT_VOICEALERT" not in line


def test_typo_in_a_voicealert_variable_is_refused_with_a_suggestion() -> None:
    line = config_error({"VOICEALERT_CALS_PER_SECOND": "5"})
    assert "VOICEALERT_CALS_PER_SECOND" in line
    assert "did you mean VOICEALERT_CALLS_PER_SECOND" in line


def test_any_unknown_voicealert_variable_is_refused_naming_it() -> None:
    assert config_error({"VOICEALERT_ZZZ": "1"}).startswith("unknown setting VOICEALERT_ZZZ")


def test_unrelated_variables_are_ignored() -> None:
    assert load_settings({"HOME": "/root", "TWILIO_EDGE": "sydney", "REDIS_HOST": "x"})


def test_every_documented_variable_is_accepted() -> None:
    settings = load_settings({
        **TWILIO,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/voicealert",
        "TWILIO_API_BASE_URL": "https://api.twilio.com",
        "VOICEALERT_PROVIDER": "twilio",
        "VOICEALERT_PUBLIC_URL": "https://alerts.example.com",
        "VOICEALERT_CALLS_PER_SECOND": "1",
        "VOICEALERT_REDIS_PREFIX": "voicealert:",
    })
    assert isinstance(settings, Settings)


# --- secrets -------------------------------------------------------------------------------------


def test_auth_token_is_not_in_repr_or_str() -> None:
    settings = load_settings(TWILIO)
    assert TWILIO["TWILIO_AUTH_TOKEN"] not in repr(settings)
    assert TWILIO["TWILIO_AUTH_TOKEN"] not in str(settings)


def test_url_passwords_are_not_in_repr_or_str() -> None:
    settings = load_settings({
        "REDIS_URL": "rediss://default:redis-SECRET-pw@cache:6380/0",
        "DATABASE_URL": "postgresql://app:pg-SECRET-pw@db:5432/voicealert",
    })
    for text in (repr(settings), str(settings)):
        assert "redis-SECRET-pw" not in text
        assert "pg-SECRET-pw" not in text
        assert "rediss://default:***@cache:6380/0" in text
    # the real value is still there for the code that connects
    assert settings.redis_url == "rediss://default:redis-SECRET-pw@cache:6380/0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "ftp://user:url-SECRET-pw@cache/0"),
        ("DATABASE_URL", "mysql://root:url-SECRET-pw@db/voicealert"),
    ],
)
def test_bad_url_error_does_not_show_its_password(variable: str, value: str) -> None:
    line = config_error({variable: value})
    assert variable in line
    assert "url-SECRET-pw" not in line


def test_error_about_another_setting_does_not_show_the_auth_token() -> None:
    line = config_error({**TWILIO, "TWILIO_FROM_NUMBER": "not-a-number"})
    assert TWILIO["TWILIO_AUTH_TOKEN"] not in line


# --- redact_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@cache:6379/0", "redis://user:***@cache:6379/0"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:p%40ss@cache:6380/1", "rediss://default:***@cache:6380/1"),
        ("postgresql://app:s3cret@db:5432/voicealert", "postgresql://app:***@db:5432/voicealert"),
        ("redis://user:p@ss@cache/0", "redis://user:***@cache/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("postgresql://postgres@127.0.0.1:5432/voicealert",
         "postgresql://postgres@127.0.0.1:5432/voicealert"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_bad_simulated_outcome_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="VOICEALERT_SIMULATED_OUTCOMES"):
        load_settings({"VOICEALERT_SIMULATED_OUTCOMES": "+14155550100=ringing"})


def test_web_process_binds_loopback_8080_by_default() -> None:
    settings = load_settings({})
    assert (settings.web_host, settings.web_port) == ("127.0.0.1", 8080)


def test_web_port_falls_back_to_port_as_heroku_and_honcho_set_it() -> None:
    assert load_settings({"PORT": "5100"}).web_port == 5100
    assert load_settings({"PORT": "5100", "VOICEALERT_WEB_PORT": "9000"}).web_port == 9000


def test_bad_port_names_the_variable_that_was_set() -> None:
    assert config_error({"PORT": "http"}).startswith("invalid PORT:")
    assert config_error({"VOICEALERT_WEB_PORT": "70000"}).startswith("invalid VOICEALERT_WEB_PORT:")


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://alerts.example.com", "https://alerts.example.com"),
        ("https://alerts.example.com/voicealert/", "https://alerts.example.com/voicealert"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_public_url_accepts_https_and_loopback_http(url: str, kept: str) -> None:
    assert load_settings({"VOICEALERT_PUBLIC_URL": url}).public_url == kept


@pytest.mark.parametrize(
    "url",
    [
        "http://alerts.example.com",  # plain http off the machine: callbacks readable in transit
        "http://10.0.0.5:8080",
        "alerts.example.com",
        "/twilio",
        "ftp://alerts.example.com",
        "https://",
        "https://user:secret@alerts.example.com",
        "https://alerts.example.com/?token=1",
        "https://alerts.example.com/#x",
        "https://alerts.example.com:99999",
        "",
    ],
)
def test_public_url_that_twilio_could_not_call_safely_fails_with_one_line(url: str) -> None:
    line = config_error({"VOICEALERT_PUBLIC_URL": url})
    assert line.startswith("invalid VOICEALERT_PUBLIC_URL: ")
    assert "secret" not in line


# --- speech and webhooks -------------------------------------------------------------------------


def test_speech_settings_default_to_todays_wording_and_can_be_changed() -> None:
    assert load_settings({}).speech.intro == "This is an alert from voice alert."
    speech = load_settings({"VOICEALERT_SPEECH_INTRO": "Achtung, eine Meldung.",
                            "VOICEALERT_SPEECH_VOICE": "Polly.Marlene",
                            "VOICEALERT_SPEECH_LANGUAGE": "de-DE"}).speech
    assert (speech.intro, speech.voice, speech.language) == (
        "Achtung, eine Meldung.", "Polly.Marlene", "de-DE")


@pytest.mark.parametrize(("name", "value"), [
    ("VOICEALERT_SPEECH_INTRO", "two\nlines"),
    ("VOICEALERT_SPEECH_INTRO", "x" * 501),
    ("VOICEALERT_SPEECH_VOICE", "alice<Dial>"),
    ("VOICEALERT_SPEECH_LANGUAGE", "english please"),
])
def test_bad_speech_settings_fail_with_one_line(name: str, value: str) -> None:
    assert config_error({name: value}).startswith(f"invalid {name}: ")


def test_webhooks_need_a_public_url_and_callbacks_need_twilio() -> None:
    assert load_settings({}).webhook_urls is None
    assert not load_settings({}).keypress_acknowledgement
    simulated = load_settings({"VOICEALERT_PUBLIC_URL": "https://alerts.example.com"})
    assert simulated.keypress_acknowledgement
    assert not simulated.callbacks
    twilio = load_settings({**TWILIO, "VOICEALERT_PUBLIC_URL": "https://alerts.example.com/va"})
    assert twilio.callbacks
    assert twilio.webhook_urls is not None
    assert twilio.webhook_urls.gather(7) == "https://alerts.example.com/va/twilio/gather?call=7"
