"""A hostile corpus against the real application: no input gets a 5xx (issue 13, point 1).

Every entry is one hostile request — malformed or mis-encoded JSON, wrong content types, wrong types in every field
of the hook request and of feedback, huge arrays and strings, dates at the edges of the calendar, numbers at the
edges of floating point, NUL characters, overlong headers, bogus JWTs — sent through the Flask test client to an
app built by ``make_app`` with authentication off, and again (the body corpus) with authentication on and a valid
token, so the same inputs reach the endpoints behind the JWT check. Each answer must be 2xx or 4xx, never 5xx; every
4xx is a FHIR OperationOutcome (the service's 401 included); no body carries a stack trace or the chart's patient
data (a sentinel planted in the Patient resource). Entries with a known answer (an edge-of-calendar date is read as
unreadable: 200; such an ``outcomeTimestamp`` or a NUL in feedback: 400) assert it.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from jwt.algorithms import ECAlgorithm
from pytest_httpserver import HTTPServer
from werkzeug.test import TestResponse

from cds_service.kit.client_tokens import ClientKey
from tests.builders import LOCAL, condition, hook_request, obs, patient, qty, searchset
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory, Feedback, Hook, feedback_document, feedback_item
from tests.synthetic_patients import ferritin, nxp2_positive

SENTINEL = "Zebedee-Sentinel-4711"
"""Planted in the Patient resource (name, identifier, address): no answer may ever contain it."""
PUBLIC = "https://cds.example.org"
EHR = "https://ehr.example.org"
FETCHED = "https://fetched.example.org"
ONE_MB = 1_000_000
Json = dict[str, Any]


def chart_patient(**extra: Any) -> Json:
    return patient(
        name=[{"family": SENTINEL, "given": [SENTINEL]}],
        identifier=[{"system": "urn:mrn", "value": SENTINEL}],
        address=[{"line": [SENTINEL]}],
        **extra,
    )


def chart(*resources: Json, with_patient: Json | None = None) -> Json:
    """A hook request for an anti-NXP2 positive child with JDM, plus ``resources``."""
    base = [with_patient or chart_patient(), nxp2_positive(), condition("M33.00"), *resources]
    return hook_request(base)


VALID = chart(condition("R60.0"), ferritin(350))


def altered(path: str, value: Any, document: Json | None = None) -> Json:
    """``document`` (default: a valid hook request) with the value at a dotted path set (``-`` deletes it)."""
    result = copy.deepcopy(document if document is not None else VALID)
    *parents, last = path.split(".")
    target: Any = result
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is _DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return result


_DELETE = object()


def dumped(document: Any) -> bytes:
    return orjson.dumps(document)


@dataclass(frozen=True)
class Hostile:
    """One hostile request. ``body`` is sent as is; ``document`` is serialised first (orjson)."""

    name: str
    document: Any = None
    body: bytes | None = None
    url: str = SERVICE_URL
    method: str = "POST"
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    expect: int | None = None
    """The status this input must get, when it has a known answer."""
    settings: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> bytes | None:
        if self.body is not None:
            return self.body
        return None if self.document is None else dumped(self.document)


def observation_at(key: str, when: Any) -> Json:
    """A ferritin result whose date (``key``) is ``when``."""
    resource = ferritin(900)
    del resource["effectiveDateTime"]
    if key == "effectivePeriod.end":
        resource["effectivePeriod"] = {"start": "2026-10-01", "end": when}
    else:
        resource[key] = when
    return resource


EDGE_DATES = {
    "year-1-east-of-utc": "0001-01-01T00:00:00+01:00",
    "year-9999-west-of-utc": "9999-12-31T23:59:59-01:00",
    "year-1-plus-14": "0001-01-01T13:59:59+14:00",
    "year-9999-minus-14": "9999-12-31T10:00:00-14:00",
}

BODIES: list[Hostile] = [
    Hostile("empty-body", body=b""),
    Hostile("whitespace-only", body=b"   \n\t "),
    Hostile("open-brace", body=b"{"),
    Hostile("close-brace", body=b"}"),
    Hostile("json-array", body=b"[]"),
    Hostile("json-null", body=b"null"),
    Hostile("json-number", body=b"1"),
    Hostile("json-string", body=b'"patient-view"'),
    Hostile("lone-comma", body=b"{,}"),
    Hostile("trailing-garbage", body=dumped(VALID) + b" trailing"),
    Hostile("two-documents", body=dumped(VALID) + dumped(VALID)),
    Hostile("byte-order-mark", body=b"\xef\xbb\xbf" + dumped(VALID)),
    Hostile("invalid-utf8-ff", body=b'{"hook": "\xff\xfe"}'),
    Hostile("invalid-utf8-truncated", body=b'{"hook": "\xc3"}'),
    Hostile("invalid-utf8-overlong-slash", body=b'{"hook": "\xc0\xaf"}'),
    Hostile("utf8-encoded-surrogate", body=b'{"hook": "\xed\xa0\x80"}'),
    Hostile("escaped-lone-surrogate", body=b'{"hook": "\\ud800", "hookInstance": "x"}'),
    Hostile("nan-literal", body=b'{"hook": NaN}'),
    Hostile("infinity-literal", body=b'{"hook": Infinity}'),
    Hostile("minus-infinity-literal", body=b'{"hook": -Infinity}'),
    Hostile("integer-of-400-digits", body=dumped(VALID)[:-1] + b',"extension":{"n":' + b"9" * 400 + b"}}"),
    Hostile("exponent-beyond-double", body=dumped(VALID)[:-1] + b',"extension":{"n":1e400}}'),
    Hostile("single-quotes", body=b"{'hook': 'patient-view'}"),
    Hostile("comment", body=b'{/* hi */ "hook": "patient-view"}'),
    Hostile("raw-control-character", body=b'{"hook": "patient\x01view"}'),
    Hostile("raw-nul-byte", body=b'{"hook": "patient\x00view"}'),
    Hostile("arrays-5000-deep", body=b'{"context":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    Hostile("objects-5000-deep", body=b'{"a":' * 5000 + b"1" + b"}" * 5000),
    Hostile(
        "duplicate-keys",
        body=dumped(VALID)[:-1] + b',"hook":"order-select","context":{"patientId":"other"}}',
    ),
    Hostile("utf16-body", body=json.dumps(VALID).encode("utf-16"), content_type="application/json; charset=utf-16"),
    Hostile("latin1-body", body='{"hook": "pätient-view"}'.encode("latin-1"), content_type="application/json"),
    Hostile("hook-instance-of-2mb", document=altered("hookInstance", "x" * 2_000_000)),
    Hostile("body-over-the-limit", body=b" " * 300_000 + dumped(VALID), settings={"max_body_bytes": 200_000}),
    Hostile("text-plain", document=VALID, content_type="text/plain"),
    Hostile("no-content-type", document=VALID, content_type=None),
    Hostile("form-urlencoded", body=b"hook=patient-view", content_type="application/x-www-form-urlencoded"),
    Hostile("multipart", body=b"--x\r\n\r\n{}\r\n--x--", content_type="multipart/form-data; boundary=x"),
    Hostile("xml", body=b"<hook>patient-view</hook>", content_type="application/xml"),
    Hostile("vendor-json-type", document=VALID, content_type="application/vnd.example+json", expect=200),
    Hostile("content-type-10k", document=VALID, content_type="application/json; x=" + "a" * 10_000),
    # the hook request, wrong types and values everywhere
    Hostile("hook-number", document=altered("hook", 1)),
    Hostile("hook-null", document=altered("hook", None)),
    Hostile("hook-list", document=altered("hook", ["patient-view"])),
    Hostile("hook-empty", document=altered("hook", "")),
    Hostile("hook-10k", document=altered("hook", "h" * 10_000)),
    Hostile("hook-other", document=altered("hook", "order-select"), expect=400),
    Hostile("hook-instance-object", document=altered("hookInstance", {})),
    Hostile("hook-instance-float", document=altered("hookInstance", 1.5)),
    Hostile("hook-instance-missing", document=altered("hookInstance", _DELETE)),
    Hostile("hook-instance-nul", document=altered("hookInstance", "a\u0000b"), expect=200),
    Hostile("context-null", document=altered("context", None)),
    Hostile("context-list", document=altered("context", [])),
    Hostile("context-string", document=altered("context", "patient")),
    Hostile("patient-id-number", document=altered("context.patientId", 123)),
    Hostile("patient-id-traversal", document=altered("context.patientId", "../../etc/passwd"), expect=400),
    Hostile("patient-id-nul", document=altered("context.patientId", "pat\u00001"), expect=400),
    Hostile("patient-id-100-chars", document=altered("context.patientId", "p" * 100), expect=400),
    Hostile("user-id-traversal", document=altered("context.userId", "Practitioner/../../x"), expect=400),
    Hostile("user-id-null", document=altered("context.userId", None)),
    Hostile("encounter-id-object", document=altered("context.encounterId", {})),
    Hostile("fhir-server-number", document=altered("fhirServer", 123)),
    Hostile("fhir-server-javascript", document=altered("fhirServer", "javascript:alert(1)")),
    Hostile("fhir-server-metadata-ip", document=altered("fhirServer", "http://169.254.169.254/latest/meta-data")),
    Hostile("fhir-server-file", document=altered("fhirServer", "file:///etc/passwd")),
    Hostile("fhir-authorization-string", document=altered("fhirAuthorization", "token")),
    Hostile(
        "fhir-authorization-wrong-types",
        document=altered(
            "fhirAuthorization", {"access_token": 1, "token_type": [], "expires_in": "x", "scope": {}, "subject": None}
        ),
    ),
    Hostile(
        "fhir-authorization-without-server",
        document=altered(
            "fhirAuthorization",
            {"access_token": "t", "token_type": "Bearer", "expires_in": 1e308, "scope": "s", "subject": "x"},
        ),
    ),
    Hostile("prefetch-list", document=altered("prefetch", [])),
    Hostile("prefetch-string", document=altered("prefetch", "x")),
    Hostile("prefetch-number", document=altered("prefetch", 1)),
    Hostile("prefetch-absent-no-server", document=altered("prefetch", None), expect=412),
    Hostile("prefetch-patient-list", document=altered("prefetch.patient", [])),
    Hostile("prefetch-patient-string", document=altered("prefetch.patient", "Patient/1")),
    Hostile("prefetch-observations-string", document=altered("prefetch.observations", "bundle")),
    Hostile("bundle-entry-object", document=altered("prefetch.observations.entry", {})),
    Hostile("bundle-entry-scalars", document=altered("prefetch.observations.entry", ["x", 1, None, [], True])),
    Hostile("bundle-entry-resource-number", document=altered("prefetch.observations.entry", [{"resource": 1}])),
    Hostile("resource-type-number", document=altered("prefetch.conditions", {"resourceType": 1})),
    Hostile(
        "bundle-in-bundle",
        document=altered("prefetch.conditions.entry", [{"resource": searchset(ferritin(900), condition("R60.0"))}]),
    ),
    Hostile("extension-list", document=altered("extension", [])),
    Hostile("request-is-an-array-of-requests", document=[VALID, VALID]),
    # charts: dates at the edges of the calendar, unreadable dates (read as "unreadable-date": 200)
    *[
        Hostile(f"observation-{key}-{label}", document=chart(observation_at(key, when)), expect=200)
        for label, when in EDGE_DATES.items()
        for key in ("effectiveDateTime", "effectiveInstant", "effectivePeriod.end", "issued")
    ],
    *[
        Hostile(f"condition-{key}-{label}", document=chart(condition("R60.0", **{key: when})), expect=200)
        for label, when in EDGE_DATES.items()
        for key in ("onsetDateTime", "recordedDate")
    ],
    Hostile(
        "condition-onset-period-edge",
        document=chart(condition("R60.0", onsetPeriod={"start": EDGE_DATES["year-1-east-of-utc"]})),
        expect=200,
    ),
    Hostile(
        "diagnosis-onset-at-the-edge",
        document=hook_request(
            [chart_patient(), nxp2_positive(), condition("M33.00", onset=EDGE_DATES["year-9999-west-of-utc"])]
        ),
        expect=200,
    ),
    *[
        Hostile(
            f"birth-date-{label}",
            document=chart(with_patient=chart_patient(birthDate=when)),
            expect=200,
        )
        for label, when in {
            "datetime-at-the-edge": "0001-01-01T00:00:00+01:00",
            "year-9999": "9999-12-31",
            "year-1": "0001-01-01",
            "30-february": "2019-02-30",
            "number": 20190301,
            "garbage": "yesterday",
        }.items()
    ],
    *[
        Hostile(f"date-{label}", document=chart(observation_at("effectiveDateTime", when)), expect=200)
        for label, when in {
            "month-13": "2024-13-01",
            "hour-24": "2026-11-01T24:00:00Z",
            "leap-second": "2026-06-30T23:59:60Z",
            "offset-25h": "2026-11-01T10:00:00+25:00",
            "offset-15h": "2026-11-01T10:00:00+15:00",
            "empty": "",
            "number": 1_700_000_000,
            "object": {"date": "2026-11-01"},
            "year-zero": "0000-01-01",
            "64-digit-fraction": "2026-11-01T10:00:00." + "9" * 64 + "Z",
            "fullwidth-digits": "２０２６-11-01",
        }.items()
    ],
    # charts: numbers at the edges (the JSON has them; what cannot be a result is skipped, never an error)
    *[
        Hostile(f"ferritin-{label}", document=chart(ferritin(value)), expect=200)
        for label, value in {
            "1e308": 1e308,
            "minus-1e308": -1e308,
            "beyond-uint64": 1.8446744073709552e19,
            "minus-zero": -0.0,
            "1e-300": 1e-300,
            "zero": 0,
        }.items()
    ],
    Hostile("ferritin-in-teragrams", document=chart(ferritin(1e15, "Tg/mL")), expect=200),
    Hostile("ferritin-value-string", document=chart(obs("2276-4", valueQuantity={"value": "1e308"})), expect=200),
    Hostile("ferritin-comparator-unknown", document=chart(ferritin(900, comparator="≈")), expect=200),
    Hostile(
        "height-1e-300",
        document=chart(obs("8302-2", **qty(1e-300, "cm")), obs("29463-7", **qty(20, "kg"))),
        expect=200,
    ),
    Hostile(
        "weight-1e308",
        document=chart(obs("8302-2", **qty(120, "cm")), obs("29463-7", **qty(1e308, "kg"))),
        expect=200,
    ),
    Hostile(
        "ratio-denominator-1e-300",
        document=chart(obs("54218-3", valueRatio={"numerator": {"value": 1e300}, "denominator": {"value": 1e-300}})),
        expect=200,
    ),
    Hostile("ratio-string-of-a-million-digits", document=chart(obs("54218-3", valueString="1" * ONE_MB)), expect=200),
    Hostile(
        "onset-age-1e308",
        document=hook_request(
            [chart_patient(), nxp2_positive(), condition("M33.00", onsetAge={"value": 1e308, "code": "a"})]
        ),
        expect=200,
    ),
    Hostile(
        "reference-range-text-of-a-million-digits",
        document=chart(obs("5048-4", **qty(80, "1"), referenceRange=[{"text": "<" + "9" * ONE_MB}])),
        expect=200,
    ),
    # charts: strings at the edges
    Hostile("code-text-1mb", document=chart(obs("X", system=LOCAL, text="NXP2 " * (ONE_MB // 5))), expect=200),
    Hostile("coding-display-1mb", document=chart(obs("X", system=LOCAL, display="a" * ONE_MB, valueString="Positive"))),
    Hostile("coding-code-1mb", document=chart(obs("M" * ONE_MB, system=LOCAL)), expect=200),
    Hostile(
        "ten-thousand-codings",
        document=chart(
            obs("2276-4", **qty(900, "ng/mL"))
            | {"code": {"coding": [{"system": LOCAL, "code": str(i)} for i in range(10_000)]}}
        ),
        expect=200,
    ),
    Hostile(
        "nul-in-texts",
        document=chart(obs("X", system=LOCAL, text="NXP2\u0000", valueString="Pos\u0000itive")),
        expect=200,
    ),
    Hostile("rtl-override-text", document=chart(obs("X", system=LOCAL, text="\u202e2PXN-itnA" * 1000)), expect=200),
    Hostile(
        "cjk-text", document=chart(obs("X", system=LOCAL, text="抗NXP2抗体" * 5000, valueString="阳性")), expect=200
    ),
    Hostile("astral-characters", document=chart(obs("X", system=LOCAL, text="🧪" * 10_000)), expect=200),
    Hostile(
        "subject-reference-1mb",
        document=chart(ferritin(900) | {"subject": {"reference": "Patient/" * (ONE_MB // 8)}}),
        expect=200,
    ),
    Hostile("subject-reference-number", document=chart(ferritin(900) | {"subject": {"reference": 1}}), expect=200),
    Hostile(
        "ten-thousand-components",
        document=chart(obs("X", system=LOCAL, component=[{"code": {"text": "c"}, "valueString": "1"}] * 10_000)),
        expect=200,
    ),
    Hostile("two-thousand-observations", document=chart(*[ferritin(i) for i in range(2000)]), expect=200),
    Hostile(
        "interpretation-wrong-types",
        document=chart(obs("5048-4", valueString="1:80", interpretation={"coding": "POS"})),
        expect=200,
    ),
    Hostile("resource-is-a-list", document=altered("prefetch.patient", [chart_patient()])),
    # feedback, wrong types everywhere
    Hostile("feedback-object", document={"feedback": {}}, url=FEEDBACK_URL, expect=400),
    Hostile("feedback-empty", document={"feedback": []}, url=FEEDBACK_URL, expect=400),
    Hostile("feedback-string", document={"feedback": "x"}, url=FEEDBACK_URL, expect=400),
    Hostile("feedback-item-number", document={"feedback": [1]}, url=FEEDBACK_URL, expect=400),
    Hostile("feedback-card-number", document=feedback_document(card=1), url=FEEDBACK_URL, expect=400),
    Hostile("feedback-card-129-chars", document=feedback_document(card="c" * 129), url=FEEDBACK_URL, expect=400),
    Hostile("feedback-outcome-unknown", document=feedback_document(outcome="maybe"), url=FEEDBACK_URL, expect=400),
    Hostile("feedback-card-nul", document=feedback_document(card="a\u0000b"), url=FEEDBACK_URL, expect=400),
    *[
        Hostile(
            f"feedback-timestamp-{label}",
            document=feedback_document(outcomeTimestamp=when),
            url=FEEDBACK_URL,
            expect=400,
        )
        for label, when in {
            "year-1-east-of-utc": "0001-01-01T00:00:00+01:00",
            "year-9999-west-of-utc": "9999-12-31T23:59:59-01:00",
            "first-moment": "0001-01-01T00:00:00Z",
            "last-moment": "9999-12-31T23:59:59Z",
            "unix-seconds": 1_700_000_000,
            "float": 1e308,
            "30-february": "2026-02-30T00:00:00Z",
            "no-time-zone": "2026-11-24T12:05:00",
            "words": "yesterday",
            "offset-25h": "2026-11-24T12:05:00+25:00",
            "boolean": True,
            "null": None,
        }.items()
    ],
    Hostile(
        "feedback-suggestions-string",
        document=feedback_document(acceptedSuggestions="x"),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-suggestion-id-number",
        document=feedback_document(outcome="accepted", acceptedSuggestions=[{"id": 1}]),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-suggestion-id-nul",
        document=feedback_document(outcome="accepted", acceptedSuggestions=[{"id": "s\u00001"}]),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-101-suggestions",
        document=feedback_document(outcome="accepted", acceptedSuggestions=[{"id": str(i)} for i in range(101)]),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile("feedback-accepted-without-suggestions", document=feedback_document(outcome="accepted"), url=FEEDBACK_URL),
    Hostile(
        "feedback-override-reason-string",
        document=feedback_document(overrideReason="x"),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-reason-code-nul",
        document=feedback_document(overrideReason={"reason": {"system": "urn:x", "code": "c\u0000"}}),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-reason-display-nul",
        document=feedback_document(overrideReason={"reason": {"system": "urn:x", "code": "c", "display": "\u0000"}}),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-comment-nul",
        document=feedback_document(overrideReason={"userComment": "fine\u0000"}),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-comment-5000-chars",
        document=feedback_document(overrideReason={"userComment": "c" * 5000}),
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-1001-entries",
        document={"feedback": [feedback_item()] * 1001},
        url=FEEDBACK_URL,
        expect=400,
    ),
    Hostile(
        "feedback-extension-nul-is-not-stored",
        document=feedback_document(extension={"note": "\u0000"}),
        url=FEEDBACK_URL,
        expect=200,
    ),
    Hostile("feedback-unknown-service", document=feedback_document(), url="/cds-services/other/feedback", expect=404),
    Hostile("feedback-get", url=FEEDBACK_URL, method="GET", expect=405),
    # headers, paths and methods
    Hostile("accept-language-10k", document=VALID, headers={"Accept-Language": "zh-CN," * 2000}, expect=200),
    Hostile("accept-language-garbage-q", document=VALID, headers={"Accept-Language": "zh;q=NaN, *;q=-1, en;q=1e400"}),
    Hostile("request-id-10k", document=VALID, headers={"X-Request-ID": "r" * 10_000}, expect=200),
    Hostile("authorization-100k-with-auth-off", document=VALID, headers={"Authorization": "Bearer " + "a" * 100_000}),
    Hostile("query-string-100k", document=VALID, url=SERVICE_URL + "?" + "q=1&" * 25_000),
    Hostile("path-traversal", url="/cds-services/../../etc/passwd", method="GET"),
    Hostile("encoded-nul-in-path", url="/cds-services/%00", method="POST", document=VALID),
    Hostile("unknown-service", url="/cds-services/<script>", document=VALID, expect=404),
    Hostile("service-id-10k", url="/cds-services/" + "s" * 10_000, document=VALID),
    Hostile("put-on-the-service", method="PUT", document=VALID, expect=405),
    Hostile("delete-on-the-service", method="DELETE", content_type=None, expect=405),
    Hostile("discovery-post", url="/cds-services", method="POST", document={}, expect=405),
    Hostile("evidence-lang-script", url="/evidence?lang=%3Cscript%3E", method="GET", content_type=None),
    Hostile("evidence-lang-10k", url="/evidence?lang=" + "x" * 10_000, method="GET", content_type=None),
]


def send(app: Flask, case: Hostile, headers: dict[str, str] | None = None) -> TestResponse:
    extra = case.headers | (headers or {})
    if case.content_type is not None:
        extra = {"Content-Type": case.content_type} | extra
    return app.test_client().open(case.url, method=case.method, data=case.payload(), headers=extra)


def assert_answer_is_safe(case: Hostile, response: TestResponse) -> None:
    """2xx or 4xx (the expected status when the case has one); an OperationOutcome on every 4xx; no stack
    trace and no patient data in the body."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (case.name, response.status_code, text[:300])
    if case.expect is not None:
        assert response.status_code == case.expect, (case.name, response.status_code, text[:300])
    if 400 <= response.status_code < 500:
        outcome = orjson.loads(response.get_data())
        assert outcome["resourceType"] == "OperationOutcome", case.name
        assert outcome["issue"], case.name
        assert all(issue["diagnostics"] for issue in outcome["issue"]), case.name
    assert "Traceback" not in text, case.name
    assert 'File "' not in text, case.name
    assert SENTINEL not in text, case.name


@pytest.mark.parametrize("case", BODIES, ids=[c.name for c in BODIES])
def test_hostile_input_without_authentication(make_app: AppFactory, case: Hostile) -> None:
    """With authentication off, every hostile input gets a 2xx or 4xx (an OperationOutcome), never a 5xx, and no
    answer leaks a stack trace or patient data."""
    assert_answer_is_safe(case, send(make_app(**case.settings), case))


# -- authentication on ----------------------------------------------------------------------------------------


@dataclass
class Guarded:
    app: Flask
    key: ClientKey
    jwks: HTTPServer

    def token(self, url: str, **extra: Any) -> str:
        return self.key.token(iss=EHR, aud=PUBLIC + url.split("?")[0], **extra)


@functools.cache
def _keys() -> ClientKey:
    """The EHR's signing key, generated once."""
    return ClientKey.generate("ES384", kid="ehr-1")


@pytest.fixture
def guarded(make_app: AppFactory, httpserver: HTTPServer) -> Guarded:
    """Authentication required: EHR's key pinned inline (its tokens also name an allowlisted ``jku``, never
    fetched), and an issuer whose keys are fetched from a local JWKS URL that answers garbage."""
    key = _keys()
    httpserver.expect_request("/fetched/jwks.json").respond_with_data("<html>not json</html>", status=200)
    issuers = [
        {"iss": EHR, "jwks": key.jwks(), "jku_allowlist": [httpserver.url_for("/ehr/jwks.json")]},
        {"iss": FETCHED, "jwks_url": httpserver.url_for("/fetched/jwks.json")},
    ]
    app = make_app(public_base_url=PUBLIC, auth={"mode": "required", "issuers": issuers, "allow_http": True})
    return Guarded(app, key, httpserver)


GUARDED_BODIES = [c for c in BODIES if not c.settings]


@pytest.mark.parametrize("case", GUARDED_BODIES, ids=[c.name for c in GUARDED_BODIES])
def test_hostile_input_with_authentication(guarded: Guarded, case: Hostile) -> None:
    """With authentication required and a valid token, every hostile input still gets a 2xx or 4xx (an
    OperationOutcome), never a 5xx."""
    response = send(guarded.app, case, {"Authorization": f"Bearer {guarded.token(case.url)}"})
    expected = case.expect if case.url in (SERVICE_URL, FEEDBACK_URL) else None
    assert_answer_is_safe(Hostile(case.name, expect=expected), response)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(key: ClientKey, header: Any, claims: Any) -> str:
    """A correctly signed ES384 JWT with exactly this header and these claims (NaN and Infinity allowed in the
    JSON: Python's JSON reader, which pyjwt uses, accepts them)."""
    head = b64(json.dumps(header, allow_nan=True).encode())
    body = b64(json.dumps(claims, allow_nan=True).encode())
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    signature = ECAlgorithm(ECAlgorithm.SHA384).sign(f"{head}.{body}".encode(), key.private_key)
    return f"{head}.{body}.{b64(signature)}"


def good_claims(**changes: Any) -> Json:
    now = int(time.time())
    claims: Json = {"iss": EHR, "aud": PUBLIC + SERVICE_URL, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    for name, value in changes.items():
        if value is _DELETE:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


HEADER = {"alg": "ES384", "typ": "JWT", "kid": "ehr-1"}
Forge = Callable[[Guarded], str]


def _hs256_with_public_key(g: Guarded) -> str:
    public_pem = g.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps(HEADER | {"alg": "HS256"}).encode())
    body = b64(json.dumps(good_claims()).encode())
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def _unsigned(header: Any, claims: Any) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


TOKENS: dict[str, Forge] = {
    "alg-none": lambda g: _unsigned(HEADER | {"alg": "none"}, good_claims()),
    "alg-None-capitalised": lambda g: _unsigned(HEADER | {"alg": "None"}, good_claims()),
    "alg-list": lambda g: signed(g.key, HEADER | {"alg": ["ES384"]}, good_claims()),
    "alg-object": lambda g: signed(g.key, HEADER | {"alg": {"ES384": True}}, good_claims()),
    "hs256-with-the-public-key": _hs256_with_public_key,
    "kid-traversal": lambda g: signed(g.key, HEADER | {"kid": "../../../../etc/passwd"}, good_claims()),
    "kid-nul": lambda g: signed(g.key, HEADER | {"kid": "ehr-1\u0000"}, good_claims()),
    "kid-10k": lambda g: signed(g.key, HEADER | {"kid": "k" * 10_000}, good_claims()),
    "kid-number": lambda g: signed(g.key, HEADER | {"kid": 1}, good_claims()),
    "jku-not-on-the-allowlist": lambda g: signed(
        g.key, HEADER | {"jku": g.jwks.url_for("/attacker/jwks.json")}, good_claims()
    ),
    "jku-file-url": lambda g: signed(g.key, HEADER | {"jku": "file:///etc/passwd"}, good_claims()),
    "jku-list": lambda g: signed(g.key, HEADER | {"jku": [g.jwks.url_for("/ehr/jwks.json")]}, good_claims()),
    "x5u-header": lambda g: signed(g.key, HEADER | {"x5u": "https://evil.example/cert"}, good_claims(aud="x")),
    "typ-jws": lambda g: signed(g.key, HEADER | {"typ": "JWS"}, good_claims()),
    "header-nested-5000-deep": lambda g: b64(b"[" * 5000 + b"]" * 5000) + "." + b64(b"{}") + ".AA",
    "claims-nested-5000-deep": lambda g: signed(g.key, HEADER, json.loads("[" * 900 + "]" * 900)),
    "claims-a-list": lambda g: signed(g.key, HEADER, [good_claims()]),
    "expired": lambda g: g.token(SERVICE_URL, now=time.time() - 3600),
    "not-yet-valid": lambda g: signed(g.key, HEADER, good_claims(nbf=int(time.time()) + 600)),
    "issued-in-the-future": lambda g: g.token(SERVICE_URL, now=time.time() + 600),
    "wrong-audience": lambda g: signed(g.key, HEADER, good_claims(aud=PUBLIC + "/cds-services/other")),
    "audience-number": lambda g: signed(g.key, HEADER, good_claims(aud=1)),
    "audience-list-of-numbers": lambda g: signed(g.key, HEADER, good_claims(aud=[1, 2])),
    "exp-string": lambda g: signed(g.key, HEADER, good_claims(exp=str(int(time.time()) + 300))),
    "iat-string": lambda g: signed(g.key, HEADER, good_claims(iat=str(int(time.time())))),
    "nbf-string": lambda g: signed(g.key, HEADER, good_claims(nbf=str(int(time.time())))),
    "exp-huge": lambda g: signed(g.key, HEADER, good_claims(exp=10**30)),
    "exp-1e308": lambda g: signed(g.key, HEADER, good_claims(exp=1e308)),
    "exp-nan": lambda g: signed(g.key, HEADER, good_claims(exp=float("nan"))),
    "exp-infinity": lambda g: signed(g.key, HEADER, good_claims(exp=float("inf"))),
    "exp-boolean": lambda g: signed(g.key, HEADER, good_claims(exp=True)),
    "iat-negative-huge": lambda g: signed(g.key, HEADER, good_claims(iat=-(10**30))),
    "nbf-nan": lambda g: signed(g.key, HEADER, good_claims(nbf=float("nan"))),
    "jti-number": lambda g: signed(g.key, HEADER, good_claims(jti=1)),
    "jti-10k": lambda g: signed(g.key, HEADER, good_claims(jti="j" * 10_000)),
    "jti-lone-surrogate": lambda g: signed(g.key, HEADER, good_claims(jti="\ud800")),
    "jti-missing": lambda g: signed(g.key, HEADER, good_claims(jti=_DELETE)),
    "iss-number": lambda g: signed(g.key, HEADER, good_claims(iss=1)),
    "iss-list": lambda g: signed(g.key, HEADER, good_claims(iss=[EHR])),
    "iss-unknown": lambda g: signed(g.key, HEADER, good_claims(iss="https://evil.example")),
    "issuer-with-unreachable-keys": lambda g: signed(g.key, HEADER, good_claims(iss=FETCHED)),
    "signature-garbage": lambda g: g.token(SERVICE_URL).rsplit(".", 1)[0] + ".AAAA",
    "signature-of-another-key": lambda g: signed(ClientKey.generate("ES384", kid="ehr-1"), HEADER, good_claims()),
    "four-segments": lambda g: g.token(SERVICE_URL) + ".AAAA",
    "token-100k": lambda g: "a" * 100_000,
    "not-base64": lambda g: "!!!.???.***",
    "empty-segments": lambda g: "..",
}

AUTHORIZATIONS: dict[str, str | None] = {
    "missing": None,
    "empty": "",
    "bearer-alone": "Bearer",
    "bearer-space": "Bearer ",
    "basic": "Basic dXNlcjpwYXNz",
    "latin1-token": "Bearer Zürich",
    "double-space": "Bearer  a.b.c",
}


@pytest.mark.parametrize("forge", list(TOKENS.values()), ids=list(TOKENS))
def test_bogus_jwt_is_401(guarded: Guarded, forge: Forge) -> None:
    """A forged, malformed, misdirected, stale or ill-typed JWT gets 401 with an OperationOutcome, never a 5xx."""
    response = Hook(guarded.app).send(VALID, headers={"Authorization": f"Bearer {forge(guarded)}"})
    assert_answer_is_safe(Hostile("token", expect=401), response)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", list(AUTHORIZATIONS.values()), ids=list(AUTHORIZATIONS))
def test_bogus_authorization_header_is_401(guarded: Guarded, value: str | None) -> None:
    """A missing, empty or non-bearer Authorization header gets 401 with an OperationOutcome."""
    headers = {} if value is None else {"Authorization": value}
    response = Hook(guarded.app).send(VALID, headers=headers)
    assert_answer_is_safe(Hostile("authorization", expect=401), response)


def test_replayed_jti_is_401(guarded: Guarded) -> None:
    """A token sent twice gets 200 and then 401 (replay), never a 5xx."""
    token = guarded.token(SERVICE_URL)
    hook = Hook(guarded.app)
    assert hook.send(VALID, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    response = hook.send(VALID, headers={"Authorization": f"Bearer {token}"})
    assert_answer_is_safe(Hostile("replay", expect=401), response)


# -- what the issue reported, stated exactly ------------------------------------------------------------------


def assessment(response: TestResponse) -> Json:
    extension: Json = response.get_json()["cards"][0]["extension"]["nxp2-cds.assessment"]
    return extension


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_edge_of_calendar_date_skips_that_resource_only(make_app: AppFactory, when: str) -> None:
    """A date whose UTC moment is outside the calendar (year 0 or 10000) skips its Observation as
    ``unreadable-date``; the rest of the chart is still assessed (it was a 500 for the whole chart)."""
    response = Hook(make_app()).send(chart(condition("R60.0"), observation_at("effectiveDateTime", when)))
    assert response.status_code == 200
    assert assessment(response)["counts"]["skipped"].get("unreadable-date") == 1


def test_nul_in_feedback_is_400_naming_the_field(make_app: AppFactory, database_url: str) -> None:
    """A NUL character in a feedback comment is refused with 400 naming the field (PostgreSQL cannot store it:
    it was a 500 there), on SQLite and PostgreSQL alike."""
    response = Feedback(make_app(database_url=database_url)).post(overrideReason={"userComment": "ok\u0000"})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["feedback.0.overrideReason.userComment"]


def test_edge_of_calendar_feedback_timestamp_is_400(make_app: AppFactory, database_url: str) -> None:
    """An ``outcomeTimestamp`` of 0001-01-01T00:00:00+01:00 is refused with 400 naming the field (it was a 500)."""
    response = Feedback(make_app(database_url=database_url)).post(outcomeTimestamp="0001-01-01T00:00:00+01:00")
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["feedback.0.outcomeTimestamp"]


def test_feedback_timestamp_in_another_zone_is_stored_as_utc(feedback: Feedback) -> None:
    """An ordinary ``outcomeTimestamp`` with an offset is accepted (the bounds refuse only the calendar's ends)."""
    response = feedback.post(outcomeTimestamp="2026-11-24T20:05:00+08:00")
    assert response.get_json() == {"received": 1, "stored": 1, "duplicates": 0}
