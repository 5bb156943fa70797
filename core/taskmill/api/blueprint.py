"""The Blueprint every API resource uses: flask-smorest's, with a JSON parser that refuses
bodies nested too deep (a 400 naming the problem, never a ``RecursionError`` and a 500).

webargs documents ``load_json`` as the method an external parser implements; nothing private
of webargs or flask-smorest is touched.
"""

from __future__ import annotations

import json
from typing import Any

import flask_smorest
from flask import Request
from marshmallow import Schema
from webargs import core
from webargs.flaskparser import FlaskParser
from webargs.flaskparser import abort
from webargs.flaskparser import is_json_request

from taskmill.serialize import JsonTooDeep
from taskmill.serialize import loads_bounded

__all__ = ["Blueprint", "JsonParser"]


class JsonParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies with :func:`taskmill.serialize.loads_bounded`."""

    def load_json(self, req: Request, schema: Schema) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return loads_bounded(data)
        except JsonTooDeep as exc:
            abort(400, exc=exc, messages={"json": [str(exc)]})
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            abort(400, exc=exc, messages={"json": ["Invalid JSON body."]})


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with :class:`JsonParser` (plugins use it too)."""

    ARGUMENTS_PARSER = JsonParser()
