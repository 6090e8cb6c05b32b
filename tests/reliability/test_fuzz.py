"""Schemathesis against the server's (completed) OpenAPI document, OpenAI and Anthropic routes, on the real
engine: no 5xx and every response, streamed or not, conforming to its schema. Bounded: a few examples per
operation and mode here; `benchmarks/reliability.py --fuzz-examples N` runs the long version."""

from __future__ import annotations

import copy

from kimi_local.server.app import create_app
from tests.reliability.fuzz import run_fuzz
from tests.reliability.openapi_doc import complete_openapi

EXAMPLES = 4


def test_fuzz_finds_no_failures(server):
    report = run_fuzz(complete_openapi(create_app(server.state)), server.url, EXAMPLES, seed=0)
    assert not report.failures, "\n\n".join(str(f) for f in report.failures[:5])
    assert report.cases >= 8 * EXAMPLES  # every operation ran (negative mode of GET routes has nothing to break)
    assert report.num_engine_replies > 0  # some requests got through to the engine and back


def test_a_wrong_response_schema_is_reported(server):
    """The checks are live: with /health documented as returning something else, every call fails."""
    doc = copy.deepcopy(complete_openapi(create_app(server.state)))
    doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "type": "object", "required": ["status"], "properties": {"status": {"const": "broken"}}}
    doc["paths"] = {"/health": doc["paths"]["/health"]}
    report = run_fuzz(doc, server.url, 2, seed=0)
    assert report.cases >= 1 and len(report.failures) == report.cases
    assert "broken" in report.failures[0].message
