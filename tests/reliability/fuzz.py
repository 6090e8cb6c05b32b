"""Schemathesis over the completed OpenAPI document (`openapi_doc`), against a live server on loopback.

Every operation is fuzzed in both of schemathesis' generation modes: positive (requests the document allows:
they reach the chat template, the engine and the stream writers) and negative (requests that break the
schema: wrong types, missing fields, bodies that are not JSON or not UTF-8). Each response must pass:

- `not_a_server_error`: no 5xx, whatever was sent;
- `status_code_conformance`: only documented statuses (200, 4XX);
- `content_type_conformance`: JSON or SSE as documented;
- `response_schema_conformance`: the body matches the response model, and for streams every SSE event
  matches its event schema (each `data:` payload is parsed and checked, see `openapi_doc`).

Failures are collected instead of raised (so hypothesis does not stop at the first and shrink), each with the
operation, the generation mode, the status and the request body that caused it. `negative_data_rejection`
(a request that breaks the schema must be refused) is counted separately as `lenient`: the server ignores
unknown fields and lets pydantic coerce types (`"seed": false` is seed 0), which the schema calls invalid but
which is not a reliability failure.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as fixed_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance, negative_data_rejection, response_schema_conformance, status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass(frozen=True)
class FuzzFailure:
    operation: str
    mode: str
    status: int
    message: str
    body: str  # the request body, JSON (truncated)

    def __str__(self) -> str:
        return f"{self.operation} [{self.mode}] -> {self.status}\n{self.message}\nrequest body: {self.body}"


@dataclass
class FuzzReport:
    cases: int = 0
    failures: list[FuzzFailure] = field(default_factory=list)
    lenient: int = 0  # schema-violating requests the server accepted (see the module docstring)
    lenient_examples: list[str] = field(default_factory=list)  # the first few: operation and request body
    statuses: Counter = field(default_factory=Counter)  # (operation, status) -> count

    @property
    def num_engine_replies(self) -> int:
        return sum(n for (op, status), n in self.statuses.items() if status == 200 and op.startswith("POST"))


def _body(case) -> str:
    try:
        text = json.dumps(case.body, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(case.body)
    return text[:2000]


def _checker(report: FuzzReport, label: str, mode: GenerationMode, base_url: str, timeout: float):
    def check(case) -> None:
        response = case.call(base_url=base_url, timeout=timeout)
        report.cases += 1
        report.statuses[(label, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            report.failures.append(FuzzFailure(label, mode.value, response.status_code, str(exc)[:3000], _body(case)))
        if mode is GenerationMode.NEGATIVE:
            try:
                case.validate_response(response, checks=[negative_data_rejection])
            except FailureGroup:
                report.lenient += 1
                if len(report.lenient_examples) < 5:
                    report.lenient_examples.append(f"{label} {response.status_code}: {_body(case)[:300]}")

    return check


def run_fuzz(doc: dict[str, Any], base_url: str, max_examples: int, seed: int | None = 0,
             timeout: float = 120.0) -> FuzzReport:
    """`max_examples` generated requests per operation and mode; `seed` makes the run reproducible."""
    report = FuzzReport()
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:
            test = given(case=operation.as_strategy(generation_mode=mode))(_checker(report, operation.label, mode,
                                                                                   base_url, timeout))
            test = settings(max_examples=max_examples, deadline=None, database=None,
                            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                            print_blob=False, verbosity=Verbosity.quiet)(test)
            if seed is not None:
                test = fixed_seed(seed)(test)
            try:
                test()
            except Unsatisfiable:  # negative mode of an operation without inputs: nothing to break
                pass
    return report
