"""The completed OpenAPI document: it covers every route of the app and schemathesis accepts it."""

from __future__ import annotations

import schemathesis

from kimi_local.server.app import create_app
from tests.reliability.openapi_doc import KNOWN, complete_openapi, missing_operations, operations


def test_every_route_is_documented(server):
    app = create_app(server.state)
    assert missing_operations(app) == set(), "a new route: describe it in tests/reliability/openapi_doc.py"
    doc = complete_openapi(app)
    assert operations(doc) == KNOWN
    for path, method in KNOWN:
        operation = doc["paths"][path][method]
        assert "200" in operation["responses"]
        assert all(r.get("content") for r in operation["responses"].values()), (path, method)
        if method == "post":
            assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]


def test_schemathesis_loads_every_operation(server):
    schema = schemathesis.openapi.from_dict(complete_openapi(create_app(server.state)))
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert labels == sorted(f"{m.upper()} {p}" for p, m in KNOWN)
