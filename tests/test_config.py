"""Settings: typed, validated once, errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import uvicorn

from api.cli import ws_options
from api.sessions import FRAME_LIMIT
from engine import config
from engine.config import ConfigError, Settings, env_name, flag_name, load_settings


def test_defaults_are_the_embedded_stack_on_localhost() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.redis_url is None and settings.chroma_url is None
    assert str(settings.demo_key_path) == "rapport-data/demo_api_key"


def test_environment_values_are_converted_to_their_types() -> None:
    settings = load_settings(
        {"RAPPORT_PORT": "9001", "RAPPORT_REDIS_TIMEOUT": "0.5", "RAPPORT_LOG_LEVEL": "debug"}
    )
    assert settings.port == 9001
    assert settings.redis_timeout == 0.5
    assert settings.log_level == "debug"


def test_flags_win_over_the_environment_and_unset_flags_do_not() -> None:
    settings = load_settings(
        {"RAPPORT_PORT": "9001", "RAPPORT_HOST": "::1"}, flags={"port": "9002", "host": None}
    )
    assert (settings.port, settings.host) == (9002, "::1")


def test_empty_variable_means_unset() -> None:
    assert load_settings({"RAPPORT_REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RAPPORT_PORT": "eighty"}, "RAPPORT_PORT (--port)"),
        ({"RAPPORT_PORT": "70000"}, "RAPPORT_PORT (--port)"),
        ({"RAPPORT_WORKERS": "0"}, "RAPPORT_WORKERS (--workers)"),
        ({"RAPPORT_REDIS_URL": "localhost:6379"}, "RAPPORT_REDIS_URL (--redis-url)"),
        ({"RAPPORT_CHROMA_URL": "ftp://x"}, "RAPPORT_CHROMA_URL (--chroma-url)"),
        ({"RAPPORT_LOG_LEVEL": "loud"}, "RAPPORT_LOG_LEVEL (--log-level)"),
        ({"RAPPORT_REDIS_TIMEOUT": "-1"}, "RAPPORT_REDIS_TIMEOUT (--redis-timeout)"),
        ({"RAPPORT_MAX_BODY_BYTES": "10"}, "RAPPORT_MAX_BODY_BYTES (--max-body-bytes)"),
        ({"RAPPORT_STT_MODEL": "/nonexistent"}, "RAPPORT_STT_MODEL (--stt-model)"),
        ({"RAPPORT_LLM_VISION": "perhaps"}, "RAPPORT_LLM_VISION (--llm-vision)"),
        ({"RAPPORT_SESSION_EVENTS": "8"}, "RAPPORT_SESSION_EVENTS (--session-events)"),
        ({"RAPPORT_SESSION_EVENTS": "100001"}, "RAPPORT_SESSION_EVENTS (--session-events)"),
        ({"RAPPORT_MEMORY_BYTES": "4095"}, "RAPPORT_MEMORY_BYTES (--memory-bytes)"),
        (
            {"RAPPORT_SESSION_RESUME_SECONDS": "0"},
            "RAPPORT_SESSION_RESUME_SECONDS (--session-resume-seconds)",
        ),
        ({"RAPPORT_WS_IMPL": "websockets"}, "RAPPORT_WS_IMPL (--ws-impl)"),  # deprecated
        ({"RAPPORT_WS_IMPL": "h11"}, "RAPPORT_WS_IMPL (--ws-impl)"),
        (
            {"RAPPORT_WS_PER_MESSAGE_DEFLATE": "sometimes"},
            "RAPPORT_WS_PER_MESSAGE_DEFLATE (--ws-per-message-deflate)",
        ),
        ({"RAPPORT_WS_PING_INTERVAL": "0"}, "RAPPORT_WS_PING_INTERVAL (--ws-ping-interval)"),
        ({"RAPPORT_WS_PING_INTERVAL": "never"}, "RAPPORT_WS_PING_INTERVAL (--ws-ping-interval)"),
        ({"RAPPORT_WS_PING_TIMEOUT": "-5"}, "RAPPORT_WS_PING_TIMEOUT (--ws-ping-timeout)"),
        ({"RAPPORT_WS_PING_TIMEOUT": "86400"}, "RAPPORT_WS_PING_TIMEOUT (--ws-ping-timeout)"),
        ({"RAPPORT_WS_MAX_SIZE": "1048576"}, "RAPPORT_WS_MAX_SIZE (--ws-max-size)"),
        ({"RAPPORT_WS_MAX_SIZE": str(FRAME_LIMIT - 1)}, "RAPPORT_WS_MAX_SIZE (--ws-max-size)"),
        ({"RAPPORT_DATA_DIR": ""}, None),  # empty is unset, not an error
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], named: str | None) -> None:
    if named is None:
        load_settings(env)
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(named + ":")


def test_several_workers_need_a_chroma_server() -> None:
    with pytest.raises(ConfigError, match=r"RAPPORT_CHROMA_URL \(--chroma-url\)"):
        load_settings({"RAPPORT_WORKERS": "2"})
    settings = load_settings(
        {"RAPPORT_WORKERS": "2", "RAPPORT_CHROMA_URL": "http://127.0.0.1:8001"}
    )
    assert settings.workers == 2


def test_socket_frames_the_session_takes_fit_under_the_default_socket_limit() -> None:
    # A full-mode voice note must reach the session, which closes 1009 above FRAME_LIMIT.
    assert config.SESSION_FRAME_LIMIT == FRAME_LIMIT
    assert Settings().ws_max_size == FRAME_LIMIT
    assert load_settings({"RAPPORT_WS_MAX_SIZE": str(FRAME_LIMIT)}).ws_max_size == FRAME_LIMIT


def test_websocket_settings_become_uvicorns() -> None:
    settings = load_settings(
        {
            "RAPPORT_WS_IMPL": "wsproto",
            "RAPPORT_WS_PER_MESSAGE_DEFLATE": "true",
            "RAPPORT_WS_PING_INTERVAL": "5",
            "RAPPORT_WS_PING_TIMEOUT": "2.5",
            "RAPPORT_WS_MAX_SIZE": str(FRAME_LIMIT + 1),
        }
    )
    given = uvicorn.Config("api.app:create_app_from_env", factory=True, **ws_options(settings))
    assert (given.ws, given.ws_per_message_deflate) == ("wsproto", True)
    assert (given.ws_ping_interval, given.ws_ping_timeout) == (5.0, 2.5)
    assert given.ws_max_size == FRAME_LIMIT + 1
    defaults = uvicorn.Config("api.app:create_app_from_env", **ws_options(Settings()))
    assert (defaults.ws, defaults.ws_per_message_deflate) == ("websockets-sansio", False)
    assert (defaults.ws_ping_interval, defaults.ws_ping_timeout) == (20.0, 20.0)


def test_wsproto_must_be_installed_to_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    found = config.importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "wsproto" else found(name, *args),
    )
    with pytest.raises(ConfigError, match=r"^RAPPORT_WS_IMPL \(--ws-impl\): the wsproto"):
        load_settings({"RAPPORT_WS_IMPL": "wsproto"})
    assert load_settings({}).ws_impl == "websockets-sansio"


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"| `{env_name(field.name)}` | `{flag_name(field.name)}` |" in readme, field.name
