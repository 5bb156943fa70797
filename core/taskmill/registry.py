"""Registries built once from the discovery hooks: brokers and storages by URL scheme,
auth backends, handlers by name. Duplicates are a PluginError naming both plugins."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

from taskmill.errors import ConfigError
from taskmill.errors import PluginError
from taskmill.handlers import HandlerSpec
from taskmill.plugins import PluginHost

__all__ = ["Registries", "build_registries", "scheme_of"]


def scheme_of(url: str) -> str:
    """The URL scheme without a driver suffix: ``postgresql+psycopg2`` → ``postgresql``."""
    return urlsplit(url).scheme.split("+", 1)[0].lower()


@dataclasses.dataclass
class Registries:
    brokers: dict[str, tuple[str, type]]
    storages: dict[str, tuple[str, type]]
    auth_backends: list[tuple[str, type]]
    handlers: dict[str, HandlerSpec]

    def broker_class(self, url: str) -> type:
        scheme = scheme_of(url)
        try:
            return self.brokers[scheme][1]
        except KeyError:
            known = ", ".join(sorted(self.brokers)) or "none"
            raise ConfigError(
                {"TASKMILL_BROKER_URL": f"no broker plugin for scheme {scheme!r} (known: {known})"}
            ) from None

    def storage_class(self, url: str) -> type:
        scheme = scheme_of(url)
        try:
            return self.storages[scheme][1]
        except KeyError:
            known = ", ".join(sorted(self.storages)) or "none"
            raise ConfigError(
                {"TASKMILL_DATABASE_URL": f"no storage plugin for scheme {scheme!r} (known: {known})"}
            ) from None

    def handler(self, name: str) -> HandlerSpec | None:
        return self.handlers.get(name)


def _by_scheme(kind: str, items: list[tuple[str, Any]]) -> dict[str, tuple[str, type]]:
    out: dict[str, tuple[str, type]] = {}
    for plugin, cls in items:
        for scheme in getattr(cls, "schemes", ()):
            if scheme in out and out[scheme][1] is not cls:
                raise PluginError(
                    f"{kind} scheme {scheme!r} is claimed by both plugin {out[scheme][0]!r} "
                    f"and plugin {plugin!r}"
                )
            out[scheme] = (plugin, cls)
    return out


def build_registries(host: PluginHost) -> Registries:
    """Call every discovery hook once and merge the answers.

    Raises:
        PluginError: a duplicate name or scheme, or a handler that is not a HandlerSpec.
    """
    handlers: dict[str, HandlerSpec] = {}
    for plugin, item in host.handlers():
        if not isinstance(item, HandlerSpec):
            raise PluginError(
                f"plugin {plugin!r} declared {item!r} as a handler; decorate it with @taskmill.handler"
            )
        if item.name in handlers:
            raise PluginError(
                f"handler {item.name!r} is declared by both plugin {handlers[item.name].plugin!r} "
                f"and plugin {plugin!r}"
            )
        handlers[item.name] = dataclasses.replace(item, plugin=plugin)
    auth = sorted(host.auth_backends(), key=lambda p: -getattr(p[1], "priority", 0))
    return Registries(
        brokers=_by_scheme("broker", host.brokers()),
        storages=_by_scheme("storage", host.storages()),
        auth_backends=auth,
        handlers=handlers,
    )
