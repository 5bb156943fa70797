"""taskmill's web dashboard: watch and steer the queue from a browser.

Registered through the ``taskmill`` entry-point group like any plugin. ``taskmill_app`` adds the
``/dashboard`` blueprint (server-rendered pages, their scripts and styles, all served from this
package) and makes ``GET /`` redirect to it. Sign-in, roles and tenants are the API's: see
:mod:`taskmill_web.blueprint` and :mod:`taskmill_web.session`.
"""

from __future__ import annotations

from typing import Any

from taskmill import hookimpl

__all__ = ["taskmill_app", "init_dashboard", "DASHBOARD_PATH"]

DASHBOARD_PATH = "/dashboard/"
"""Where the dashboard lives (``GET /`` redirects here)."""


def init_dashboard(app: Any) -> None:
    """Register the dashboard on a taskmill app (its runtime is ``app.extensions["taskmill"]``)."""
    from flask import redirect

    from taskmill.plugin_api import public
    from taskmill_web import actions  # noqa: F401 - registers the forms' routes
    from taskmill_web import live  # noqa: F401 - registers the live JSON routes
    from taskmill_web import views  # noqa: F401 - registers the pages
    from taskmill_web.blueprint import EXTENSION_KEY
    from taskmill_web.blueprint import bp
    from taskmill_web.overview import Overview
    from taskmill_web.session import init_session

    runtime = app.extensions["taskmill"]
    reads = getattr(runtime.storage, "insights", None)
    if reads is None:
        from taskmill.plugin_api import PluginError

        raise PluginError(
            f"the dashboard needs a storage with an insights store; {type(runtime.storage).__name__} has none"
        )
    app.extensions[EXTENSION_KEY] = {"reads": reads, "overview": Overview(reads, runtime.storage)}
    init_session(app)
    app.register_blueprint(bp)

    @public
    def root() -> Any:
        return redirect(DASHBOARD_PATH)

    app.add_url_rule("/", "dashboard_root", root)


@hookimpl
def taskmill_app(app: Any) -> None:
    """Add the dashboard to the app (every role builds the app; only the api role serves it)."""
    init_dashboard(app)
