"""Loading plugins, and the typed façade core uses to call them."""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING
from typing import Any

import pluggy

from taskmill import hookspecs

if TYPE_CHECKING:  # pragma: no cover
    import click
    from flask import Flask

    from taskmill.config import Settings
    from taskmill.models import Task
    from taskmill.runtime import Runtime

__all__ = ["get_plugin_manager", "PluginHost", "describe_plugins", "BUILTIN_DISTRIBUTION"]

logger = logging.getLogger("taskmill.plugins")

BUILTIN_DISTRIBUTION = "taskmill"
"""The distribution that ships the built-in plugins (they are entry points like any other)."""


def get_plugin_manager(settings: Settings, plugins: list[Any] | None = None) -> pluggy.PluginManager:
    """Build a plugin manager: specs, blocked names, entry points, extra plugins, check.

    Args:
        settings: ``disabled_plugins`` are blocked; ``load_plugins``, when set, restricts
            entry-point loading to those distributions; ``trace_plugins`` logs every hook call.
        plugins: objects to register in addition (tests).
    """
    pm = pluggy.PluginManager("taskmill")
    pm.add_hookspecs(hookspecs)
    for name in settings.disabled_plugins:
        pm.set_blocked(name)
    if settings.load_plugins is None:
        pm.load_setuptools_entrypoints("taskmill")
    else:
        allowed = set(settings.load_plugins)
        for name in _allowed_entry_points(allowed):
            pm.load_setuptools_entrypoints("taskmill", name=name)
    for plugin in plugins or []:
        pm.register(plugin)
    pm.check_pending()
    if settings.trace_plugins:
        pm.trace.root.setwriter(logger.debug)
        pm.enable_tracing()
    return pm


def _allowed_entry_points(allowed: set[str]) -> list[str]:
    """Names of the ``taskmill`` entry points that an allowlist admits: by entry-point name, or
    by the name of the distribution that declares them."""
    names: list[str] = []
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["name"]
        for ep in dist.entry_points:
            if ep.group == "taskmill" and (ep.name in allowed or dist_name in allowed):
                names.append(ep.name)
    return sorted(set(names))


class PluginHost:
    """One typed method per hook, so core never spells a hook name as a string."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def brokers(self) -> list[tuple[str, type]]:
        return self._collect("taskmill_brokers")

    def storages(self) -> list[tuple[str, type]]:
        return self._collect("taskmill_storages")

    def auth_backends(self) -> list[tuple[str, type]]:
        return self._collect("taskmill_auth_backends")

    def handlers(self) -> list[tuple[str, Any]]:
        return self._collect("taskmill_handlers")

    def settings_specs(self) -> list[tuple[str, Any]]:
        return self._collect("taskmill_settings")

    def extend_app(self, app: Flask) -> None:
        self.pm.hook.taskmill_app(app=app)

    def extend_cli(self, group: click.Group) -> None:
        self.pm.hook.taskmill_cli(group=group)

    def bootstrap(self, runtime: Any) -> list[str]:
        lines: list[str] = []
        for answer in self.pm.hook.taskmill_bootstrap(runtime=runtime):
            lines.extend(answer or [])
        return lines

    def task_event(self, task: Task, event: str, runtime: Runtime) -> None:
        """Tell every observer; a failing observer is logged and the others still run."""
        self.notify("taskmill_task_event", task=task, event=event, runtime=runtime)

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception:  # noqa: BLE001 - observers must not break the lifecycle
                logger.critical("plugin %s failed in %s", impl.plugin_name, hook_name, exc_info=True)

    def _collect(self, hook_name: str) -> list[tuple[str, Any]]:
        """Call a discovery hook per implementation, keeping who declared what."""
        hook = getattr(self.pm.hook, hook_name)
        found: list[tuple[str, Any]] = []
        for impl in reversed(hook.get_hookimpls()):  # registration order
            for item in impl.function() or []:
                found.append((impl.plugin_name, item))
        return found

    def distribution_of(self, plugin_name: str) -> str:
        plugin = self.pm.get_plugin(plugin_name)
        for obj, dist in self.pm.list_plugin_distinfo():
            if obj is plugin:
                return f"{dist.project_name} {dist.version}"
        return "(registered directly)"


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every registered plugin with its distribution and the hooks it implements."""
    dists = {id(obj): f"{d.project_name} {d.version}" for obj, d in pm.list_plugin_distinfo()}
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = sorted(hc.name for hc in (pm.get_hookcallers(plugin) or []))
        out.append(
            {"name": name, "distribution": dists.get(id(plugin), "(registered directly)"), "hooks": hooks}
        )
    return sorted(out, key=lambda p: p["name"] or "")
