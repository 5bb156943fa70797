"""``taskmill api-keys create|list|revoke`` and ``taskmill audit``: operator commands that work on
the database directly (no API call, no credential: whoever can run them can reach the database)."""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

from taskmill.plugin_api import Role
from taskmill.plugin_api import format_time
from taskmill_auth.apikeys import create_api_key
from taskmill_auth.apikeys import revoke_api_key
from taskmill_auth.store import auth_store

__all__ = ["register_commands"]


def _runtime() -> Any:
    from taskmill.plugin_api import build_runtime
    from taskmill.plugin_api import load_settings
    from taskmill.plugin_api import scheme_of

    settings = load_settings()
    return build_runtime(settings, upgrade=scheme_of(settings.database_url) == "sqlite")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def _audit(rt: Any, action: str, target: str, tenant: str, **details: Any) -> None:
    auth_store(rt).audit.add(
        {"actor": _actor(), "tenant": tenant, "action": action, "target": target, "details": details or None}
    )


def _time(value: Any) -> str:
    return format_time(value) if value is not None else "-"


@click.group("api-keys")
def api_keys() -> None:
    """Create, list and revoke API keys."""


@api_keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts in.")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]), help="Its role.")
@click.option("--name", default=None, help="A label for people.")
@click.option("--json", "as_json", is_flag=True, help="Print {id, key, tenant, role, name} as JSON.")
def create(tenant: str, role: str, name: str | None, as_json: bool) -> None:
    """Create an API key and print it (it is shown only this once)."""
    rt = _runtime()
    try:
        created = create_api_key(rt, tenant, role, name)
        _audit(rt, "api_key.create", created["id"], tenant, role=role)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps({k: created[k] for k in ("id", "key", "tenant", "role", "name")}))
        return
    click.echo(f"API key: {created['key']}")
    click.echo(f"id={created['id']} tenant={tenant} role={role} (the key is shown only this once)")


@api_keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys(as_json: bool) -> None:
    """List API keys (never their secrets)."""
    rt = _runtime()
    try:
        keys = auth_store(rt).keys.list()
    finally:
        rt.close()
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "tenant": k.tenant,
            "role": k.role.value,
            "prefix": k.prefix,
            "created_at": _time(k.created_at),
            "last_used_at": _time(k.last_used_at),
            "revoked_at": _time(k.revoked_at),
        }
        for k in keys
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':<36}  {'tenant':<16} {'role':<10} {'prefix':<12}  {'last used':<24} name")
    for r in rows:
        state = " (revoked)" if r["revoked_at"] != "-" else ""
        click.echo(
            f"{r['id']:<36}  {r['tenant']:<16} {r['role']:<10} {r['prefix']:<12}  "
            f"{r['last_used_at']:<24} {r['name'] or ''}{state}"
        )


@api_keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke an API key (other api processes stop accepting it within seconds)."""
    rt = _runtime()
    try:
        keys = {k.id: k for k in auth_store(rt).keys.list()}
        if not revoke_api_key(rt, key_id):
            raise click.ClickException(f"no active API key {key_id}")
        _audit(rt, "api_key.revoke", key_id, keys[key_id].tenant)
    finally:
        rt.close()
    click.echo(f"{key_id} revoked")


def _audit_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)(fn)
    return click.option("--tenant", default=None, help="Only this tenant's entries.")(fn)


@click.group("audit", invoke_without_command=True)
@_audit_options
@click.pass_context
def audit_cmd(ctx: click.Context, tenant: str | None, limit: int, as_json: bool) -> None:
    """The audit log (`taskmill audit` alone lists it, like `taskmill audit list`)."""
    if ctx.invoked_subcommand is None:
        _print_audit(tenant, limit, as_json)


@audit_cmd.command("list")
@_audit_options
def audit_list(tenant: str | None, limit: int, as_json: bool) -> None:
    """Print the audit log, newest first.  Example: taskmill audit list --tenant acme --json"""
    _print_audit(tenant, limit, as_json)


def _print_audit(tenant: str | None, limit: int, as_json: bool) -> None:
    rt = _runtime()
    try:
        items, total = auth_store(rt).audit.list(offset=0, limit=limit, tenant=tenant)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps([{**i, "at": _time(i["at"])} for i in items], indent=2))
        return
    for i in items:
        details = json.dumps(i["details"]) if i.get("details") else ""
        click.echo(
            f"{_time(i['at'])}  {i['tenant']:<16} {i['actor']:<44} {i['action']:<22} "
            f"{i['target'] or '-'} {details}"
        )
    click.echo(f"({len(items)} of {total})")


def register_commands(group: click.Group) -> None:
    """Add ``api-keys`` and ``audit`` to the ``taskmill`` command group."""
    group.add_command(api_keys)
    group.add_command(audit_cmd)
