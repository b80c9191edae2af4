"""schemathesis against the central service's own OpenAPI document: no 5xx, no schema violations.

Requests carry a valid agent token and its agent id, so generated bodies reach validation
and storage (schemathesis also checks that dropping the token is refused). The app is built at import
(schemathesis parametrizes from a loaded schema) in a temp dir removed after the module.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation

from scanfort.protocol import EnrollRequest
from service.app import create_app
from service.settings import Settings
from service.store import Store

_DATA_DIR = Path(tempfile.mkdtemp(prefix="sf-schema-"))
_SETTINGS = Settings(
    data_dir=_DATA_DIR,
    recipients=("age1siterecipient",),
    max_object_bytes=4096,
    login_failure_delay_s=0,
)
_STORE = Store(_SETTINGS.database_url)
_STORE.create_schema()
_STORE.set_user("admin", "schema-test-password")
_ENROLLED = _STORE.enroll(
    _STORE.mint_enrollment_token(3600)[1], EnrollRequest(host="fuzz", os="Linux", version="0")
)
assert _ENROLLED is not None
_AGENT_ID, _TOKEN = _ENROLLED

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_SETTINGS, store=_STORE))


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _STORE.close()
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    headers = dict(case.headers or {})
    meta = case.meta
    negative_headers = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
    if not negative_headers:  # a case that drops the token on purpose must stay without it
        headers["Authorization"] = f"Bearer {_TOKEN}"
    positive = meta is None or meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict) and "agent_id" in case.body:
        # the token's own agent id, so generated reports get past the 403 into storage
        case.body["agent_id"] = _AGENT_ID
    case.call_and_validate(headers=headers)


def test_generated_reports_reached_storage() -> None:
    """Runs after the schema test (file order): positive cases were stored, not just rejected."""
    agent = _STORE.get_agent(_AGENT_ID)
    assert agent is not None and agent.heartbeats > 0
    assert agent.status is not None
