"""Plugins declare their own settings (hook ``taskmill_settings``); core validates them."""

from __future__ import annotations

from typing import Any

import pytest

from taskmill import hookimpl
from taskmill.config import describe_settings
from taskmill.config import load_settings
from taskmill.errors import ConfigError
from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec
from taskmill.runtime import build_runtime

SPEC = SettingsSpec(
    name="thumbs",
    prefix="thumbs",
    doc="A third-party plugin's settings.",
    settings=(
        Setting("size", int, 128, "Edge in pixels.", minimum=16, maximum=4096),
        Setting("mode", str, "fit", "How to scale.", choices=("fit", "fill")),
        Setting("api_token", str, "", "Token of the image service.", secret=True),
        Setting("sharpen", bool, False, "Sharpen after scaling."),
    ),
)


class ThumbsPlugin:
    @hookimpl
    def taskmill_settings(self) -> list[SettingsSpec]:
        return [SPEC]


def _runtime(tmp_path: Any, environ: dict[str, str], plugins: list[Any] | None = None) -> Any:
    env = {"TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/s.db", "TASKMILL_LOAD_PLUGINS": "sql", **environ}
    return build_runtime(load_settings(environ=env), plugins=plugins)


def test_hook_taskmill_settings(tmp_path: Any) -> None:
    rt = _runtime(
        tmp_path,
        {"TASKMILL_THUMBS_SIZE": "256", "TASKMILL_THUMBS_MODE": "fill", "TASKMILL_THUMBS_SHARPEN": "yes"},
        [ThumbsPlugin()],
    )
    try:
        values = rt.plugin_settings("thumbs")
        assert (values.size, values.mode, values.sharpen, values.api_token) == (256, "fill", True, "")
        with pytest.raises(AttributeError):
            values.size = 1  # read-only
        assert rt.plugin_setting("nobody", "x", "dflt") == "dflt"
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASKMILL_THUMBS_SIZE", "huge", "expected an integer"),
        ("TASKMILL_THUMBS_SIZE", "8", "at least 16"),
        ("TASKMILL_THUMBS_MODE", "stretch", "must be one of 'fit', 'fill'"),
        ("TASKMILL_THUMBS_SHARPEN", "maybe", "expected a boolean"),
    ],
)
def test_a_bad_plugin_value_is_a_config_error_naming_it(
    tmp_path: Any, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _runtime(tmp_path, {name: value}, [ThumbsPlugin()])
    assert name in str(info.value) and message in str(info.value)


def test_a_name_no_plugin_declares_is_refused_with_every_problem_listed(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        _runtime(tmp_path, {"TASKMILL_THUMBS_SIZ": "1", "TASKMILL_THUMBS_SIZE": "x"}, [ThumbsPlugin()])
    text = str(info.value)
    assert "TASKMILL_THUMBS_SIZ:" in text and "unknown setting" in text
    assert "TASKMILL_THUMBS_SIZE" in text  # both problems in one error


def test_the_same_name_without_the_plugin_is_unknown(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="TASKMILL_THUMBS_SIZE"):
        _runtime(tmp_path, {"TASKMILL_THUMBS_SIZE": "256"})


def test_built_in_plugins_own_their_settings(tmp_path: Any) -> None:
    rt = _runtime(
        tmp_path,
        {
            "TASKMILL_LOAD_PLUGINS": "sql,redis,auth,handlers",
            "TASKMILL_REDIS_WORKER_CLASS": "fork",
            "TASKMILL_JWT_LEEWAY": "10",
            "TASKMILL_WEBHOOK_ALLOW_PRIVATE": "1",
            "TASKMILL_HTTP_ALLOW_PRIVATE": "0",
            "TASKMILL_METRICS_TOKEN": "t0ken",
        },
    )
    try:
        assert rt.plugin_settings("redis").worker_class == "fork"
        assert rt.plugin_settings("jwt").leeway == 10
        assert rt.plugin_settings("webhook").allow_private is True
        assert rt.plugin_settings("http").allow_private is False
        assert rt.plugin_settings("metrics").token == "t0ken"
        assert not hasattr(rt.settings, "redis_worker_class")  # not core's any more
    finally:
        rt.close()
    for name, value, message in [
        ("TASKMILL_REDIS_WORKER_CLASS", "threads", "must be one of"),
        ("TASKMILL_JWT_SECRET", "short", "at least 32 bytes"),
        ("TASKMILL_JWT_LEEWAY", "301", "at most 300"),
    ]:
        with pytest.raises(ConfigError) as info:
            _runtime(tmp_path, {"TASKMILL_LOAD_PLUGINS": "sql,redis,auth", name: value})
        assert name in str(info.value) and message in str(info.value)


def test_the_reference_lists_core_and_plugin_settings_with_secrets_marked() -> None:
    rows = {r["name"]: r for r in describe_settings([SPEC])}
    assert rows["TASKMILL_DATABASE_URL"]["owner"] == "core"
    assert rows["TASKMILL_DATABASE_URL"]["doc"].startswith("SQLAlchemy URL")
    assert rows["TASKMILL_THUMBS_API_TOKEN"]["secret"] is True
    assert rows["TASKMILL_THUMBS_SIZE"]["default"] == 128
    assert rows["TASKMILL_METRICS_TOKEN"]["secret"] is True
