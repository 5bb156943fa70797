"""The composition root shared by every role: settings → plugins → registries → storage, broker.

A :class:`Runtime` is built once per process (the API keeps it in
``app.extensions["taskmill"]``; the worker and manager hold it directly).
"""

from __future__ import annotations

import logging
import os
import secrets
from functools import cached_property
from typing import Any

from taskmill.config import CORE_SPECS
from taskmill.config import PluginSettings
from taskmill.config import Settings
from taskmill.config import load_settings
from taskmill.config import plugin_settings
from taskmill.interfaces import Broker
from taskmill.interfaces import Storage
from taskmill.plugins import PluginHost
from taskmill.plugins import get_plugin_manager
from taskmill.registry import Registries
from taskmill.registry import build_registries

__all__ = ["Runtime", "build_runtime"]

logger = logging.getLogger("taskmill")


class Runtime:
    """Settings, plugin host, registries, storage, broker and lifecycle of one process."""

    def __init__(self, settings: Settings, plugins: list[Any] | None = None) -> None:
        self.settings = settings
        self.pm = get_plugin_manager(settings, plugins)
        self.host = PluginHost(self.pm)
        self.specs = [spec for _, spec in self.host.settings_specs()]
        self._plugin_settings = plugin_settings([*CORE_SPECS, *self.specs], settings)
        self.registries: Registries = build_registries(self.host)
        storage_cls = self.registries.storage_class(settings.database_url)
        self.storage: Storage = storage_cls(settings.database_url, settings)
        broker_url = settings.effective_broker_url
        broker_cls = self.registries.broker_class(broker_url)
        self.broker: Broker = broker_cls(broker_url, settings, self)
        self._pid = os.getpid()
        #: id of the worker this process serves as (set by the worker role)
        self.worker_id = ""
        #: set by push-broker workers that record outcomes in batches (taskmill.execution)
        self.outcome_writer: Any = None

    def plugin_settings(self, name: str) -> PluginSettings:
        """The settings a plugin declared under ``name`` (see hook ``taskmill_settings``).

        Raises:
            KeyError: no loaded plugin declares settings under that name.
        """
        return self._plugin_settings[name]

    def plugin_setting(self, name: str, key: str, default: Any = None) -> Any:
        """One plugin setting, or ``default`` when that plugin is not loaded."""
        values = self._plugin_settings.get(name)
        return default if values is None else getattr(values, key, default)

    @cached_property
    def lifecycle(self) -> Any:
        from taskmill.lifecycle import Lifecycle

        return Lifecycle(self)

    @cached_property
    def secret_key(self) -> str:
        """The installation's server secret: configured, or generated once into the database."""
        if self.settings.secret_key:
            return self.settings.secret_key
        return self.storage.settings.get_or_create("secret_key", secrets.token_hex(32))

    def after_fork(self) -> None:
        """Drop connections inherited from the parent process."""
        self.storage.after_fork()
        self._pid = os.getpid()

    def close(self) -> None:
        try:
            self.broker.close()
        finally:
            self.storage.close()


def build_runtime(
    settings: Settings | None = None, *, plugins: list[Any] | None = None, upgrade: bool = False
) -> Runtime:
    """Build the runtime; with ``upgrade`` apply migrations first.

    Raises:
        ConfigError: invalid settings or no plugin for a URL scheme.
        PluginError: a broken or conflicting plugin.
    """
    rt = Runtime(settings or load_settings(), plugins)
    if upgrade:
        rt.storage.upgrade()
    return rt
