"""docs/configuration.md is generated from the settings core and the plugins declare."""

from __future__ import annotations

import pathlib

from taskmill.cli_config import reference_markdown
from taskmill.config import describe_settings
from taskmill.config import load_settings
from taskmill.plugins import PluginHost
from taskmill.plugins import get_plugin_manager

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_code_declares() -> None:
    generated = reference_markdown()
    assert DOC.read_text(encoding="utf-8") == generated, (
        "docs/configuration.md is stale: run `taskmill config reference > docs/configuration.md`"
    )


def test_the_reference_names_every_setting_with_a_sentence() -> None:
    host = PluginHost(get_plugin_manager(load_settings(environ={"TASKMILL_LOAD_PLUGINS": "taskmill"})))
    rows = describe_settings([spec for _, spec in host.settings_specs()])
    text = reference_markdown()
    owners = {r["owner"] for r in rows}
    assert {"core", "metrics", "redis", "jwt", "webhook", "http"} <= owners
    for row in rows:
        assert f"| `{row['name']}` |" in text
        assert row["doc"], f"{row['name']} has no description"
