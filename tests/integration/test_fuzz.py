"""Schema-driven fuzzing of every route of the real server (schemathesis).

The OpenAPI document the server itself serves drives generation: valid and invalid
path parameters, query strings and JSON bodies, sent with the admin token. No answer may
be a 5xx, and every answer whose status the document describes must match its schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from central.api.routes import ROUTES
from tests.support import CentralProcess, api_ok, register, running_central


def _doc_path(path: str) -> str:
    """The document's path of a route: aiohttp's ``{name:regex}`` is ``{name}`` there."""
    return re.sub(r"{(\w+):[^{}]+}", r"{\1}", path)


MAX_EXAMPLES = 6  # per operation and mode: about 55 operations, kept under a minute
# (method, path, mode): invalid requests only where there is something to get wrong
CASES = [
    pytest.param(r.method, _doc_path(r.path), mode, id=f"{r.method} {r.path} {mode.value}")
    for r in ROUTES
    if r.method != "HEAD"
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "{" in r.path or r.query or r.body
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralProcess]:
    """A central holding a model, an alias and a fleet, so some requests hit real records."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "central"
    with running_central(data_dir) as central:
        register(central, "fuzz", "1.0.0")
        api_ok(central, "PUT", "/api/v1/models/fuzz/aliases/production", json={"version": "1.0.0"})
        api_ok(central, "POST", "/api/v1/fleets", 201, json={"name": "fuzz"})
        yield central
        assert "Traceback" not in central.log_text(), central.log_tail()


@pytest.fixture(scope="module")
def api_schema(fuzzed: CentralProcess) -> Any:
    """The document as the running server serves it."""
    return schemathesis.openapi.from_url(fuzzed.url + "/api/v1/openapi.json")


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_server_errors_and_answers_match_the_schema(
    fuzzed: CentralProcess, api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzzed.token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            base_url=fuzzed.url,
            headers=headers,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )

    fuzz()
