"""The dashboard's forms (POST): sign-in and sign-out, and every action, each declaring the
API's role for it, acting through the lifecycle and services within ``scope_tenant()``, and
writing the same audit entries as the API."""

from __future__ import annotations

import uuid
from typing import Any

from flask import abort
from flask import flash
from flask import redirect
from flask import request
from flask import url_for
from marshmallow import ValidationError as SchemaError

from taskmill.plugin_api import AuthError
from taskmill.plugin_api import InvalidTransition
from taskmill.plugin_api import NotFound
from taskmill.plugin_api import Role
from taskmill.plugin_api import TaskCreateSchema
from taskmill.plugin_api import TaskNotFound
from taskmill.plugin_api import ValidationError
from taskmill.plugin_api import audit
from taskmill.plugin_api import get_runtime
from taskmill.plugin_api import payload_json_schema
from taskmill.plugin_api import public
from taskmill.plugin_api import requires
from taskmill.plugin_api import scope_tenant
from taskmill.plugin_api import submit_tenant
from taskmill.plugin_api import validate_queue_name
from taskmill_web import extras
from taskmill_web import session as web_session
from taskmill_web.blueprint import bp
from taskmill_web.blueprint import render
from taskmill_web.blueprint import safe_next
from taskmill_web.blueprint import state
from taskmill_web.forms import FormError
from taskmill_web.forms import fields_of
from taskmill_web.forms import read_options
from taskmill_web.forms import read_payload

__all__ = ["REQUEUE_CAP", "REQUEUE_BATCH"]

REQUEUE_CAP = 100_000
"""Most dead letters one "requeue all matching" may requeue (the confirmation counts up to it)."""

REQUEUE_BATCH = 1000
"""Dead letters requeued per statement (the API's limit per call)."""


def _see_other(endpoint: str, **values: Any) -> Any:
    return redirect(url_for(endpoint, **values), code=303)


def _task_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise TaskNotFound(f"task {value[:64]} not found") from None


# ---- signing in and out ------------------------------------------------------------------------


@bp.get("/sign-in")
@public
def sign_in() -> Any:
    """The sign-in form (an API key)."""
    if get_runtime().settings.auth == "none" or web_session.signed_in():
        return redirect(safe_next(request.args.get("next")))
    return render("sign_in.html", next=safe_next(request.args.get("next")), error=None)


@bp.post("/sign-in")
@public
def sign_in_post() -> Any:
    """Check the API key through the auth backends and start a session."""
    key = (request.form.get("api_key") or "").strip()
    target = safe_next(request.form.get("next"))
    if not key:
        return render("sign_in.html", 400, next=target, error="Enter an API key.")
    try:
        principal = web_session.sign_in(key)
    except AuthError:
        return render("sign_in.html", 401, next=target, error="That API key was not accepted.")
    audit("dashboard.sign_in", principal.subject)
    return redirect(target, code=303)


@bp.post("/sign-out")
@public
def sign_out() -> Any:
    """End the session."""
    web_session.sign_out()
    flash("You are signed out.", "info")
    return _see_other("dashboard.sign_in")


# ---- tasks -------------------------------------------------------------------------------------


@bp.post("/tasks/<task_id>/cancel")
@requires(Role.SUBMITTER)
def cancel(task_id: str) -> Any:
    """Cancel a task (a running one is asked to stop)."""
    try:
        task, done = get_runtime().lifecycle.cancel(_task_id(task_id), scope_tenant())
    except InvalidTransition as exc:
        flash(f"Not cancelled: {exc.message}", "error")
        return _see_other("dashboard.task", task_id=task_id)
    audit("task.cancel", task.id, tenant=task.tenant, running=not done)
    flash("Cancelled." if done else "Asked the running task to stop.", "info")
    return _see_other("dashboard.task", task_id=task_id)


@bp.post("/tasks/<task_id>/retry")
@requires(Role.SUBMITTER)
def retry(task_id: str) -> Any:
    """Run a failed or cancelled task again."""
    try:
        task = get_runtime().lifecycle.retry(_task_id(task_id), scope_tenant())
    except InvalidTransition as exc:
        flash(f"Not retried: {exc.message}", "error")
        return _see_other("dashboard.task", task_id=task_id)
    audit("task.retry", task.id, tenant=task.tenant)
    flash("Queued again.", "info")
    return _see_other("dashboard.task", task_id=task_id)


# ---- dead letters ------------------------------------------------------------------------------


@bp.post("/dead-letters/<task_id>/requeue")
@requires(Role.OPERATOR)
def requeue_one(task_id: str) -> Any:
    """Requeue one failed task."""
    tenant = scope_tenant()
    parsed = _task_id(task_id)
    get_runtime().lifecycle.get(parsed, tenant)  # 404 outside the tenant
    tasks = get_runtime().lifecycle.requeue_dead_letters([parsed], tenant)
    audit("dead_letters.requeue", f"{len(tasks)} task(s)", by="ids", requeued=len(tasks), ids=[task_id])
    if tasks:
        flash("Requeued.", "info")
    else:
        flash("Not requeued: the task is no longer failed.", "error")
    return _see_other("dashboard.task", task_id=task_id)


@bp.post("/dead-letters/requeue")
@requires(Role.OPERATOR)
def requeue_matching() -> Any:
    """Requeue the failed tasks matching a filter, at most as many as the confirmation said."""
    form = request.form
    filters = {k: (form.get(k) or "").strip()[:200] for k in ("type", "queue", "error_type")}
    filters = {k: v for k, v in filters.items() if v}
    try:
        expected = max(0, min(int(form.get("expected", "0")), REQUEUE_CAP))
    except ValueError:
        expected = 0
    runtime = get_runtime()
    reads = state()["reads"]
    tenant = scope_tenant()
    done: list[str] = []
    while len(done) < expected:
        ids = reads.failed_ids(
            tenant,
            type_=filters.get("type"),
            queue=filters.get("queue"),
            error_type=filters.get("error_type"),
            limit=min(REQUEUE_BATCH, expected - len(done)),
        )
        if not ids:
            break
        requeued = runtime.lifecycle.requeue_dead_letters(ids, tenant)
        done.extend(str(t.id) for t in requeued)
        if not requeued:
            break
    audit(
        "dead_letters.requeue",
        f"{len(done)} task(s)",
        by="filter",
        filter=filters,
        requeued=len(done),
        ids=done[:REQUEUE_BATCH],
    )
    flash(f"Requeued {len(done)} task(s).", "info")
    return _see_other("dashboard.dead_letters", **filters)


# ---- queues ------------------------------------------------------------------------------------


def _set_paused(name: str, paused: bool) -> Any:
    try:
        validate_queue_name(name)
    except SchemaError:
        abort(404, description="no such queue")
    storage = get_runtime().storage
    store = getattr(storage, "queues", None)
    if store is not None and hasattr(store, "set_paused"):
        store.set_paused(name, paused)
    else:
        storage.queues.set_paused(name, paused)
    state()["overview"].invalidate()
    audit("queue.pause" if paused else "queue.resume", name)
    flash(f"Queue {name} {'paused' if paused else 'resumed'}.", "info")
    return redirect(safe_next(request.form.get("next") or url_for("dashboard.queues")), code=303)


@bp.post("/queues/<name>/pause")
@requires(Role.ADMIN)
def pause_queue(name: str) -> Any:
    """Pause a queue (workers take nothing from it)."""
    return _set_paused(name, True)


@bp.post("/queues/<name>/resume")
@requires(Role.ADMIN)
def resume_queue(name: str) -> Any:
    """Resume a paused queue."""
    return _set_paused(name, False)


# ---- handlers: submit a task -------------------------------------------------------------------


@bp.post("/handlers/<name>")
@requires(Role.SUBMITTER)
def submit(name: str) -> Any:
    """Submit a task of this type from the form built from its payload schema."""
    runtime = get_runtime()
    spec = runtime.registries.handler(name)
    if spec is None:
        abort(404, description=f"no handler named {name[:200]!r}")
    schema = payload_json_schema(spec)
    fields, free = fields_of(schema)
    errors: dict[str, Any] = {}
    try:
        body = {"type": name, "payload": read_payload(schema, request.form), **read_options(request.form)}
        data = TaskCreateSchema().load(body)
        lifecycle = runtime.lifecycle
        ((task, created),) = lifecycle.submit([lifecycle.build(data, submit_tenant())])
    except FormError as exc:
        errors = exc.errors
    except SchemaError as exc:
        errors = _flatten(exc.messages)
    except ValidationError as exc:
        errors = _flatten(exc.errors) or {"_": exc.message}
    if errors:
        return render(
            "handler.html",
            422,
            page="handlers",
            spec=spec,
            schema=schema,
            fields=fields,
            free=free,
            errors=errors,
            form=request.form,
        )
    audit("task.submit", task.id, type=task.type, queue=task.queue, created=created)
    flash("Task submitted.", "info")
    return _see_other("dashboard.task", task_id=str(task.id))


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    """Marshmallow's nested messages as ``{"payload.n": "…"}``."""
    if isinstance(messages, dict):
        out: dict[str, str] = {}
        for key, value in messages.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(messages, list):
        return {prefix.rstrip(".") or "_": "; ".join(str(m) for m in messages)}
    return {prefix.rstrip(".") or "_": str(messages)}


# ---- schedules ---------------------------------------------------------------------------------


def _schedule_action(name: str, action: str) -> Any:
    service = extras.schedule_service(get_runtime())
    if service is None:
        abort(404, description="schedules are not available in this installation")
    try:
        schedule = getattr(service, action)(name, scope_tenant())
    except NotFound:
        abort(404, description="no such schedule")
    audit(f"schedule.{action}", schedule.name, tenant=schedule.tenant)
    flash(f"Schedule {schedule.name} {action}d.", "info")
    return _see_other("dashboard.schedules")


@bp.post("/schedules/<name>/pause")
@requires(Role.OPERATOR)
def pause_schedule(name: str) -> Any:
    """Pause a schedule."""
    return _schedule_action(name, "pause")


@bp.post("/schedules/<name>/resume")
@requires(Role.OPERATOR)
def resume_schedule(name: str) -> Any:
    """Resume a schedule."""
    return _schedule_action(name, "resume")


@bp.post("/schedules/<name>/delete")
@requires(Role.OPERATOR)
def delete_schedule(name: str) -> Any:
    """Delete a schedule."""
    return _schedule_action(name, "delete")
