"""``/api/v1/docs``: Swagger UI served entirely from local files.

The assets come from the ``swagger_ui_bundle`` package, the initializer is a static script of
ours (no inline ``<script>``), and the page sends a Content-Security-Policy allowing only this
host, so nothing is fetched from another host.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from flask import Blueprint
from flask import Response
from flask import render_template
from flask import send_from_directory

from taskmill.api.auth import public

__all__ = ["blp", "CSP"]

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""Content-Security-Policy of the docs page. Swagger UI sets inline styles, so styles may be
inline here (and only here); scripts never: they all come from this host."""

blp = Blueprint("docs", __name__, url_prefix="/api/v1/docs", template_folder="templates")


@blp.get("")
@public
def page() -> Response:
    """The interactive API documentation."""
    response = Response(render_template("taskmill_api_docs.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    return response


@blp.get("/taskmill-docs.js")
@public
def initializer() -> Response:
    """The script that starts Swagger UI on the page."""
    return send_from_directory(STATIC_DIR, "taskmill-docs.js", mimetype="text/javascript", max_age=3600)


@blp.get("/swagger-ui/<path:filename>")
@public
def swagger_asset(filename: str) -> Response:
    """A file of the swagger-ui distribution (scripts, styles, icons)."""
    return send_from_directory(SWAGGER_DIR, filename, max_age=86400)
