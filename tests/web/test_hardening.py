"""Input limits: nesting, sizes and counts end in a clear 4xx, never a 5xx."""

from __future__ import annotations

from typing import Any

from tests.builders import condition, hook_request, obs, patient, qty, searchset
from tests.http_support import AppFactory, Hook
from tests.synthetic_patients import nxp2_positive


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"extension": [{"url": "urn:x", "extension": [value]}]} if isinstance(value, dict) else {"v": value}
    return value


def test_json_nested_beyond_the_parser_limit_is_400(hook: Hook) -> None:
    """A body nested thousands of levels deep is refused with 400."""
    body = b'{"hook":"patient-view","context":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = hook.send_bytes(body)
    assert response.status_code == 400


def test_deeply_nested_resource_is_skipped_not_fatal(hook: Hook) -> None:
    """A matching Observation nested far deeper than any FHIR resource is skipped; the call still succeeds."""
    deep = obs("2276-4", **qty(900, "ng/mL")) | {"extension": [nested(60)]}
    response = hook.call(patient(), nxp2_positive(), condition("M33.00"), deep)
    assert response.status_code == 200
    extension = response.get_json()["cards"][0]["extension"]["nxp2-cds.assessment"]
    assert extension["counts"]["skipped"].get("too-deep") == 1


def test_too_many_prefetch_resources_is_413(make_app: AppFactory) -> None:
    """A prefetch with more resources than max_prefetch_resources is refused with 413."""
    app = make_app(max_prefetch_resources=20)
    document = hook_request([patient()])
    document["prefetch"]["observations"] = searchset(*[obs("8867-4", **qty(80, "/min")) for _ in range(21)])
    assert Hook(app).send(document).status_code == 413


def test_invalid_utf8_is_400(hook: Hook) -> None:
    """A body that is not valid UTF-8 is refused with 400."""
    response = hook.send_bytes(b'{"hook": "\xff\xfe"}')
    assert response.status_code == 400


def test_nan_literal_is_400(hook: Hook) -> None:
    """JSON extensions such as NaN are not JSON: 400."""
    response = hook.send_bytes(b'{"hook": NaN}')
    assert response.status_code == 400


def test_huge_numbers_do_not_crash(hook: Hook) -> None:
    """An Observation value of 1e308 (or an integer with 400 digits) is handled without an error."""
    assert (
        hook.call(patient(), nxp2_positive(), condition("M33.00"), obs("2276-4", **qty(1e308, "ng/mL"))).status_code
        == 200
    )
    body = (
        b'{"hook":"patient-view","hookInstance":"x","context":{"userId":"Practitioner/1","patientId":"p"},'
        b'"prefetch":{"observations":{"resourceType":"Observation","value":' + b"9" * 400 + b"}}}"
    )
    response = hook.send_bytes(body)
    assert response.status_code < 500
