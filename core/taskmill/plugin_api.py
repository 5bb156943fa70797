"""The published plugin API: what a taskmill plugin may import from core.

A plugin (built-in or third-party) imports from ``taskmill`` (handlers, ``hookimpl``),
``taskmill.plugin_api`` (this module), ``taskmill.testing`` (its tests) and ``taskmill.client``;
nothing else of core. Core's other modules may change shape between releases; the names below
keep their meaning. ``tests/unit/test_plugin_api.py`` fails when a built-in plugin reaches past
this module.

Names are resolved on first use, so importing this module costs nothing and a plugin that
needs only settings does not import the worker or Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers; at run time names resolve lazily
    from taskmill.api import register_blueprint
    from taskmill.api.auth import audit
    from taskmill.api.auth import current_principal
    from taskmill.api.auth import principal_for_credential
    from taskmill.api.auth import public
    from taskmill.api.auth import requires
    from taskmill.api.auth import scope_tenant
    from taskmill.api.auth import submit_tenant
    from taskmill.api.auth import use_principal
    from taskmill.api.blueprint import Blueprint
    from taskmill.api.errors import documents_errors
    from taskmill.api.events import KEEPALIVE
    from taskmill.api.events import TooManyStreams
    from taskmill.api.events import hub_of as event_hub_of
    from taskmill.api.events import stream as event_stream
    from taskmill.api.schemas import TaskCreateSchema
    from taskmill.api.schemas import UtcDateTime
    from taskmill.api.schemas import validate_queue_name
    from taskmill.api.tasks import page_bounds
    from taskmill.app import get_runtime
    from taskmill.config import PluginSettings
    from taskmill.config import Setting
    from taskmill.config import Settings
    from taskmill.config import SettingsSpec
    from taskmill.config import load_settings
    from taskmill.config import read_spec
    from taskmill.errors import AuthError
    from taskmill.errors import BrokerError
    from taskmill.errors import BrokerUnavailable
    from taskmill.errors import ConfigError
    from taskmill.errors import Conflict
    from taskmill.errors import Forbidden
    from taskmill.errors import InvalidTransition
    from taskmill.errors import NotFound
    from taskmill.errors import PluginError
    from taskmill.errors import RateLimited
    from taskmill.errors import Retry
    from taskmill.errors import StorageError
    from taskmill.errors import StorageUnavailable
    from taskmill.errors import TaskmillError
    from taskmill.errors import TaskNotFound
    from taskmill.errors import ValidationError
    from taskmill.execution import TimeoutExpired
    from taskmill.execution import run_handler
    from taskmill.handlers import payload_json_schema
    from taskmill.hookspecs import hookimpl
    from taskmill.insights import LIVE_STATES
    from taskmill.insights import SEARCH_WINDOW
    from taskmill.insights import InsightsStore
    from taskmill.insights import Page
    from taskmill.insights import TaskFilter
    from taskmill.insights import decode_cursor
    from taskmill.insights import encode_cursor
    from taskmill.insights import parse_payload_query
    from taskmill.interfaces import AuthBackend
    from taskmill.interfaces import Broker
    from taskmill.interfaces import Storage
    from taskmill.models import FINAL_STATES
    from taskmill.models import PENDING_STATES
    from taskmill.models import ApiKey
    from taskmill.models import DeadLetterQuery
    from taskmill.models import Event
    from taskmill.models import EventQuery
    from taskmill.models import NewTask
    from taskmill.models import Outcome
    from taskmill.models import Principal
    from taskmill.models import QueueInfo
    from taskmill.models import Role
    from taskmill.models import SameAs
    from taskmill.models import Task
    from taskmill.models import TaskQuery
    from taskmill.models import TaskStatus
    from taskmill.models import WorkerInfo
    from taskmill.models import utcnow
    from taskmill.probes import beat
    from taskmill.registry import scheme_of
    from taskmill.runtime import Runtime
    from taskmill.runtime import build_runtime
    from taskmill.schedules import Schedule
    from taskmill.schedules import ScheduleService
    from taskmill.serialize import format_time
    from taskmill.serialize import loads_bounded
    from taskmill.serialize import task_to_dict
    from taskmill.worker import CancelWatch
    from taskmill.worker import OutcomeBuffer
    from taskmill.worker import Presence
    from taskmill.worker import ProgressCoalescer
    from taskmill.worker import WorkerOptions
    from taskmill.worker import current_runtime
    from taskmill.worker import die_with_parent
    from taskmill.worker import set_current_runtime
    from taskmill.worker.transport import Consumer
    from taskmill.worker.transport import Delivery
    from taskmill.workflows import NewWorkflow
    from taskmill.workflows import Workflow
    from taskmill.workflows import WorkflowService
    from taskmill.workflows import derive_status


__all__ = [
    "parse_payload_query",
    "decode_cursor",
    "encode_cursor",
    "LIVE_STATES",
    "SEARCH_WINDOW",
    "Page",
    "TaskFilter",
    "InsightsStore",
    "validate_queue_name",
    "use_principal",
    "submit_tenant",
    "principal_for_credential",
    "payload_json_schema",
    "loads_bounded",
    "event_hub_of",
    "event_stream",
    "TooManyStreams",
    "KEEPALIVE",
    "derive_status",
    "WorkflowService",
    "Workflow",
    "TaskCreateSchema",
    "Schedule",
    "RateLimited",
    "NewWorkflow",
    "Forbidden",
    # contracts
    "Broker",
    "Storage",
    "AuthBackend",
    "Delivery",
    "Consumer",
    # domain
    "Task",
    "TaskStatus",
    "Outcome",
    "WorkerInfo",
    "QueueInfo",
    "TaskQuery",
    "DeadLetterQuery",
    "Event",
    "EventQuery",
    "NewTask",
    "Principal",
    "Role",
    "ApiKey",
    "FINAL_STATES",
    "PENDING_STATES",
    "SameAs",
    "utcnow",
    "task_to_dict",
    "format_time",
    # errors
    "TaskmillError",
    "ConfigError",
    "PluginError",
    "BrokerError",
    "BrokerUnavailable",
    "StorageError",
    "StorageUnavailable",
    "AuthError",
    "Conflict",
    "NotFound",
    "TaskNotFound",
    "ValidationError",
    "InvalidTransition",
    "Retry",
    # settings
    "Setting",
    "SettingsSpec",
    "PluginSettings",
    "Settings",
    "read_spec",
    "load_settings",
    # runtime and roles
    "Runtime",
    "build_runtime",
    "scheme_of",
    "hookimpl",
    # worker duty units (brokers that keep their own loop plug these in)
    "WorkerOptions",
    "Presence",
    "CancelWatch",
    "OutcomeBuffer",
    "run_handler",
    "ProgressCoalescer",
    "TimeoutExpired",
    "current_runtime",
    "set_current_runtime",
    "die_with_parent",
    "beat",
    # web extensions (taskmill_app)
    "Blueprint",
    "register_blueprint",
    "requires",
    "public",
    "audit",
    "current_principal",
    "scope_tenant",
    "ScheduleService",
    "documents_errors",
    "get_runtime",
    "page_bounds",
    "UtcDateTime",
]

_WHERE: dict[str, str] = {
    "parse_payload_query": "taskmill.insights",
    "decode_cursor": "taskmill.insights",
    "encode_cursor": "taskmill.insights",
    "LIVE_STATES": "taskmill.insights",
    "SEARCH_WINDOW": "taskmill.insights",
    "Page": "taskmill.insights",
    "TaskFilter": "taskmill.insights",
    "InsightsStore": "taskmill.insights",
    "validate_queue_name": "taskmill.api.schemas",
    "use_principal": "taskmill.api.auth",
    "submit_tenant": "taskmill.api.auth",
    "principal_for_credential": "taskmill.api.auth",
    "payload_json_schema": "taskmill.handlers",
    "loads_bounded": "taskmill.serialize",
    "event_hub_of": "taskmill.api.events",
    "event_stream": "taskmill.api.events",
    "TooManyStreams": "taskmill.api.events",
    "KEEPALIVE": "taskmill.api.events",
    "derive_status": "taskmill.workflows",
    "WorkflowService": "taskmill.workflows",
    "Workflow": "taskmill.workflows",
    "TaskCreateSchema": "taskmill.api.schemas",
    "Schedule": "taskmill.schedules",
    "RateLimited": "taskmill.errors",
    "NewWorkflow": "taskmill.workflows",
    "Forbidden": "taskmill.errors",
    "Broker": "taskmill.interfaces",
    "Storage": "taskmill.interfaces",
    "AuthBackend": "taskmill.interfaces",
    "Delivery": "taskmill.worker.transport",
    "Consumer": "taskmill.worker.transport",
    "Task": "taskmill.models",
    "TaskStatus": "taskmill.models",
    "Outcome": "taskmill.models",
    "WorkerInfo": "taskmill.models",
    "QueueInfo": "taskmill.models",
    "TaskQuery": "taskmill.models",
    "DeadLetterQuery": "taskmill.models",
    "Event": "taskmill.models",
    "EventQuery": "taskmill.models",
    "NewTask": "taskmill.models",
    "Principal": "taskmill.models",
    "Role": "taskmill.models",
    "ApiKey": "taskmill.models",
    "FINAL_STATES": "taskmill.models",
    "PENDING_STATES": "taskmill.models",
    "SameAs": "taskmill.models",
    "utcnow": "taskmill.models",
    "task_to_dict": "taskmill.serialize",
    "format_time": "taskmill.serialize",
    "TaskmillError": "taskmill.errors",
    "ConfigError": "taskmill.errors",
    "PluginError": "taskmill.errors",
    "BrokerError": "taskmill.errors",
    "BrokerUnavailable": "taskmill.errors",
    "StorageError": "taskmill.errors",
    "StorageUnavailable": "taskmill.errors",
    "AuthError": "taskmill.errors",
    "Conflict": "taskmill.errors",
    "NotFound": "taskmill.errors",
    "TaskNotFound": "taskmill.errors",
    "ValidationError": "taskmill.errors",
    "InvalidTransition": "taskmill.errors",
    "Retry": "taskmill.errors",
    "Setting": "taskmill.config",
    "SettingsSpec": "taskmill.config",
    "PluginSettings": "taskmill.config",
    "Settings": "taskmill.config",
    "read_spec": "taskmill.config",
    "load_settings": "taskmill.config",
    "Runtime": "taskmill.runtime",
    "build_runtime": "taskmill.runtime",
    "scheme_of": "taskmill.registry",
    "hookimpl": "taskmill.hookspecs",
    "WorkerOptions": "taskmill.worker",
    "Presence": "taskmill.worker",
    "CancelWatch": "taskmill.worker",
    "OutcomeBuffer": "taskmill.worker",
    "run_handler": "taskmill.execution",
    "ProgressCoalescer": "taskmill.worker",
    "TimeoutExpired": "taskmill.execution",
    "current_runtime": "taskmill.worker",
    "set_current_runtime": "taskmill.worker",
    "die_with_parent": "taskmill.worker",
    "beat": "taskmill.probes",
    "Blueprint": "taskmill.api.blueprint",
    "register_blueprint": "taskmill.api",
    "requires": "taskmill.api.auth",
    "public": "taskmill.api.auth",
    "audit": "taskmill.api.auth",
    "current_principal": "taskmill.api.auth",
    "scope_tenant": "taskmill.api.auth",
    "ScheduleService": "taskmill.schedules",
    "documents_errors": "taskmill.api.errors",
    "get_runtime": "taskmill.app",
    "page_bounds": "taskmill.api.tasks",
    "UtcDateTime": "taskmill.api.schemas",
}
"""Where each published name lives today (an implementation detail: import from here)."""


_ALIASES: dict[str, str] = {"event_hub_of": "hub_of", "event_stream": "stream"}
"""Published names that differ from the name in their module."""


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"taskmill.plugin_api has no {name!r}")
    value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
