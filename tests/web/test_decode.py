"""Selective decoding of the hook request (issue 16, item 1): the envelope exactly as before, the prefetch pruned to
the fields the mappings read, the original JSON kept for validation and provenance.

The reference is the reading it replaces: the whole body parsed with orjson (:func:`whole`, swapped in with
``monkeypatch``). Every answer is compared byte for byte with that reading's, on the hostile corpus, on the synthetic
patients and on generated charts whose resources carry unknown fields and wrong types.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection
from typing import Any

import msgspec
import orjson
import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from cds_service.core.engine import Engine
from cds_service.errors import BadRequest
from cds_service.web import decode
from cds_service.web.decode import HookBody
from fhir_mappings import SkipReason
from fhir_mappings.pruned import Originals, PrunedResources, decode_node
from tests.builders import AT, PID, coded, condition, hook_request, obs, patient, qty, searchset
from tests.http_support import SERVICE_URL, AppFactory
from tests.synthetic_patients import CASES, ferritin, nxp2_positive
from tests.test_property_core import CHARTS, conditions, observations, patients
from tests.web.test_hostile_corpus import BODIES, Hostile, send

Json = dict[str, Any]
KEYS = ("patient", "observations", "conditions", "laboratory")


def whole(body: bytes, keys: Collection[str]) -> HookBody:
    """The reading before issue 16: the whole body parsed with orjson, nothing pruned."""
    return HookBody(decode.loads(body), body, pruned=False)


Answer = tuple[int, bytes]


def answers(app: Flask, monkeypatch: pytest.MonkeyPatch, body: bytes, **headers: str) -> tuple[Answer, Answer]:
    """The service's answer to ``body`` read selectively, and read whole (status, body)."""
    extra = {"Content-Type": "application/json"} | headers
    got = []
    for reader in (decode.hook_body, whole):
        monkeypatch.setattr(decode, "hook_body", reader)
        response = app.test_client().post(SERVICE_URL, data=body, headers=extra)
        got.append((response.status_code, response.get_data()))
    monkeypatch.undo()
    return got[0], got[1]


def decoded(document: Any) -> HookBody:
    return decode.hook_body(json.dumps(document).encode(), KEYS)


def prefetched(document: Json, key: str) -> Any:
    return decoded(document).document["prefetch"][key]


def raw(document: Any) -> msgspec.Raw:
    """``document`` as the JSON text a Raw slice of a body holds."""
    found: msgspec.Raw = msgspec.json.decode(b"[" + orjson.dumps(document) + b"]", type=list[msgspec.Raw])[0]
    return found


# -- the same answers as reading the whole body ------------------------------------------------------------------


HOOK_BODIES = [c for c in BODIES if c.url == SERVICE_URL and c.method == "POST"]


@pytest.mark.parametrize("case", HOOK_BODIES, ids=[c.name for c in HOOK_BODIES])
def test_hostile_corpus_gets_the_same_answers(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, case: Hostile
) -> None:
    """Every hostile hook request of the corpus (invalid JSON, wrong types in the envelope and in the prefetch,
    edge dates and numbers, huge strings) gets exactly the answer it got when the whole body was read: the same
    status and the same bytes (the same OperationOutcome, the same cards)."""
    app = make_app(**case.settings)
    got = []
    for reader in (decode.hook_body, whole):
        monkeypatch.setattr(decode, "hook_body", reader)
        response = send(app, case)
        got.append((response.status_code, response.get_data()))
    assert got[0] == got[1], case.name


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_synthetic_patients_get_the_same_cards(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, case: Any
) -> None:
    """Each synthetic patient (every predictor, unit, coding variant, status rule and eligibility branch) gets the
    same cards, byte for byte (provenance, values, dates, counts of skipped resources), pruned or read whole."""
    body = orjson.dumps(hook_request(case.resources))
    pruned, read_whole = answers(make_app(), monkeypatch, body)
    assert pruned[0] == 200
    assert pruned == read_whole


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
ODD_KEYS = st.sampled_from(
    [
        "valueFoo",
        "value",
        "abatementFoo",
        "abatementString",
        "hasMember",
        "dataAbsentReason",
        "valueRange",
        "meta",
        "text",
        "extension",
        "_valueString",
        "component",
        "entry",
        "status",
        "code",
        "subject",
        "valueQuantity",
        "valueInteger",
        "interpretation",
        "referenceRange",
        "onsetAge",
        "effectivePeriod",
    ]
) | st.text(max_size=10)


@st.composite
def altered_charts(draw: st.DrawFn) -> list[Json]:
    """Generated Observations, Conditions and a Patient, some with fields changed to any JSON at all (wrong types,
    unknown fields, keys that look like ``value[x]`` or ``abatement[x]``), anywhere in the resource."""
    resources: list[Json] = [
        *draw(st.lists(observations(), max_size=5)),
        *draw(st.lists(conditions(), max_size=3)),
        nxp2_positive(),
        condition("M33.00"),
    ]
    chart_patient = draw(st.none() | patients())
    if chart_patient is not None:
        resources.insert(0, chart_patient)
    for _ in range(draw(st.integers(0, 4))):
        resource = draw(st.sampled_from(resources))
        target: Any = resource
        while isinstance(target, dict) and target and draw(st.booleans()):
            child = target[draw(st.sampled_from(sorted(target)))]
            if not isinstance(child, dict | list) or not child:
                break
            target = child if isinstance(child, dict) else draw(st.sampled_from(child))
        if isinstance(target, dict):
            target[draw(ODD_KEYS)] = draw(JSON_VALUES)
    return resources


@given(altered_charts())
@CHARTS
def test_generated_charts_get_the_same_answers(app: Flask, resources: list[Json]) -> None:
    """Generated charts with edge dates, quantities and strings, and fields changed to anything (a wrong type falls
    back to the whole resource; an unknown field is skipped), get the same answer pruned as read whole (JSON that
    orjson refuses, a lone surrogate or NaN, is refused alike)."""
    body = json.dumps(hook_request(copy.deepcopy(resources)), ensure_ascii=True).encode()
    with pytest.MonkeyPatch.context() as monkeypatch:
        pruned, read_whole = answers(app, monkeypatch, body)
    assert pruned == read_whole


# -- the envelope: same validation, same errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1,]", b'{"hook": NaN}', b'{"hook": "\\ud800"}', b"\xef\xbb\xbf{}", b'{"a": 1} x', b'{"hook": 1e400}'],
)
def test_invalid_json_is_a_400_with_orjsons_message(body: bytes) -> None:
    """Invalid JSON is a 400 whose message is orjson's, position included, as before."""
    with pytest.raises(BadRequest) as raised:
        decode.hook_body(body, KEYS)
    with pytest.raises(orjson.JSONDecodeError) as reference:
        orjson.loads(body)
    assert (
        str(raised.value)
        == f"The request body is not valid JSON ({reference.value.msg} at position {reference.value.pos})."
    )


def test_invalid_utf8_in_a_field_nobody_reads_is_still_a_400() -> None:
    """Invalid UTF-8 is refused wherever it is, even in a field of a resource the mappings skip unread (msgspec
    would skip it without looking): the same 400 as orjson's."""
    document = hook_request([patient(), ferritin(300, meta={"source": "PLACEHOLDER"})])
    body = orjson.dumps(document).replace(b"PLACEHOLDER", b"\xff\xfe")
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode.hook_body(body, KEYS)


def test_a_body_that_is_not_an_object_is_read_whole() -> None:
    """A body that is JSON but not an object is read whole, so the service refuses it as before ("must be a JSON
    object")."""
    for body in (b"[]", b"null", b'"patient-view"', b"1"):
        found = decode.hook_body(body, KEYS)
        assert not found.pruned
        assert found.document == orjson.loads(body)


def test_the_envelope_is_what_orjson_reads() -> None:
    """Everything but the prefetch (hook, hookInstance, fhirServer, fhirAuthorization, context, extension) is
    exactly what orjson reads; fields the service ignores are left out, as HookRequest ignores them."""
    document = hook_request([patient()]) | {
        "fhirServer": "https://ehr.example.org/fhir",
        "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 1.5e3, "scope": "s"},
        "extension": {"n": 2**70, "x": [1, {"y": None}]},
        "unknownField": {"ignored": True},
    }
    found = decoded(document).document
    expected = orjson.loads(json.dumps(document))
    del expected["prefetch"], expected["unknownField"]
    assert {k: v for k, v in found.items() if k != "prefetch"} == expected


def test_duplicate_keys_keep_the_last_value_as_before() -> None:
    """A key given twice keeps its last value, in the envelope and in the prefetch, as orjson reads it."""
    body = orjson.dumps(hook_request([patient()]))[:-1] + b',"hook":"order-select","prefetch":{"patient":null}}'
    found = decode.hook_body(body, KEYS).document
    assert found["hook"] == "order-select"
    assert found["prefetch"] == {"patient": None}


def test_prefetch_keys_the_templates_do_not_name_are_left_out() -> None:
    """A prefetch key the templates do not name (nothing reads it) is skipped unread."""
    document = hook_request([patient()])
    document["prefetch"]["other"] = ferritin(300)
    assert set(decoded(document).document["prefetch"]) == set(KEYS)


# -- pruning ---------------------------------------------------------------------------------------------------


def test_unknown_fields_are_dropped() -> None:
    """Fields no mapping reads (narrative, meta, identifiers, extensions, performer, note) are not built."""
    resource = ferritin(
        300,
        meta={"lastUpdated": "2026-11-01T10:00:00Z"},
        identifier=[{"value": "lab-1"}],
        extension=[{"url": "urn:x", "valueString": "x"}],
        performer=[{"reference": "Practitioner/1"}],
        note=[{"text": "haemolysed"}],
    )
    resource["text"] = {"status": "generated", "div": "<div>300 ng/mL</div>"}
    found = prefetched(hook_request([resource]), "observations")["entry"][0]["resource"]
    assert not {"text", "meta", "identifier", "extension", "performer", "note"} & set(found)
    assert found == {k: resource[k] for k in ("resourceType", "id", "status", "code", "subject")} | {
        "effectiveDateTime": resource["effectiveDateTime"],
        "valueQuantity": resource["valueQuantity"],
    }


def test_unknown_fields_inside_read_fields_are_dropped() -> None:
    """Inside the fields that are read, what is not read is dropped too (a coding's version, a quantity's
    extension, a reference's display)."""
    resource = ferritin(300)
    resource["code"]["coding"][0]["version"] = "2.77"
    resource["valueQuantity"]["extension"] = [{"url": "urn:x"}]
    resource["subject"]["display"] = "A child"
    found = prefetched(hook_request([resource]), "observations")["entry"][0]["resource"]
    assert "version" not in found["code"]["coding"][0]
    assert "extension" not in found["valueQuantity"]
    assert found["subject"] == {"reference": f"Patient/{PID}"}


def test_fields_read_for_their_presence_are_empty_objects() -> None:
    """``hasMember``, ``dataAbsentReason`` and the value[x] types no rule reads are kept only as being there."""
    resource = obs(
        "X",
        hasMember=[{"reference": "Observation/1"}],
        dataAbsentReason=coded("urn:x", "unknown"),
        valueRange={"low": {"value": 1}},
    )
    found = prefetched(hook_request([resource]), "observations")["entry"][0]["resource"]
    assert (found["hasMember"], found["dataAbsentReason"], found["valueRange"]) == ([{}], {}, {})


def test_a_resource_with_a_wrong_type_is_read_whole() -> None:
    """A resource with a field of another type than the mappings read (a value as a string) is parsed whole, as
    before, and is not recorded as pruned; the others of its Bundle are still pruned."""
    good, bad = ferritin(300), obs("2276-4", valueQuantity={"value": "300", "unit": "ng/mL"}, meta={"x": 1})
    found = decoded(hook_request([good, bad]))
    entries = found.document["prefetch"]["observations"]["entry"]
    assert entries[1]["resource"] == bad
    assert found.originals.get(entries[1]["resource"]) is None
    assert found.originals.get(entries[0]["resource"]) is not None


@pytest.mark.parametrize("number", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_read_as_orjson_reads_them(number: int) -> None:
    """An integer beyond the signed 64-bit range, in a field that is read, makes its resource be parsed whole:
    orjson's reading (a float beyond 2**64-1) is kept exactly."""
    resource = obs("2276-4", valueQuantity={"value": number, "unit": "ng/mL"})
    body = json.dumps(hook_request([resource])).encode()
    found = decode.hook_body(body, KEYS).document["prefetch"]["observations"]["entry"][0]["resource"]
    expected = orjson.loads(body)["prefetch"]["observations"]["entry"][0]["resource"]
    assert found == expected
    assert type(found["valueQuantity"]["value"]) is type(expected["valueQuantity"]["value"])


def test_entries_without_a_resource_are_read_as_before() -> None:
    """Entries whose resource is null, missing, or not an object are read as before (the mappings skip or count
    them as malformed)."""
    document = hook_request([patient()])
    document["prefetch"]["observations"]["entry"] = [{"resource": None}, {"fullUrl": "urn:x"}, {"resource": 1}]
    assert prefetched(document, "observations")["entry"] == document["prefetch"]["observations"]["entry"]


def test_a_bundle_in_a_bundle_is_pruned_too() -> None:
    """A Bundle inside a Bundle's entry is pruned like the outer one, and its resources keep their originals."""
    inner = searchset(ferritin(300, meta={"versionId": "1"}))
    document = hook_request([patient()])
    document["prefetch"]["observations"]["entry"] = [{"resource": inner}]
    found = decoded(document)
    resource = found.document["prefetch"]["observations"]["entry"][0]["resource"]["entry"][0]["resource"]
    assert "meta" not in resource
    assert PrunedResources(originals=found.originals).original(resource) == inner["entry"][0]["resource"]


def test_a_bundle_with_one_bad_entry_is_read_entry_by_entry() -> None:
    """When one entry cannot be pruned, only that entry is parsed whole; the Bundle's other entries are pruned."""
    bad = obs("2276-4") | {"status": 5}
    bundle = searchset(ferritin(300, meta={"v": 1}), bad, ferritin(200, meta={"v": 2}))
    originals = Originals()
    found = decode_node(raw(bundle), originals)
    first, second, third = (e["resource"] for e in found["entry"])
    assert "meta" not in first
    assert "meta" not in third
    assert second == bundle["entry"][1]["resource"]
    assert originals.get(first) is not None
    assert originals.get(second) is None


def test_equal_codes_and_subjects_are_one_object() -> None:
    """Resources whose ``code`` (or ``subject``) JSON is the same share one decoded object, across the Bundles of
    a request: a chart's thousands of results hold a few hundred codes."""
    first, second = ferritin(300), ferritin(200)
    found = decoded(hook_request([first, second, condition("M33.00")])).document["prefetch"]
    a, b = (e["resource"] for e in found["observations"]["entry"])
    (c,) = (e["resource"] for e in found["conditions"]["entry"])
    assert a["code"] == first["code"]
    assert a["code"] is b["code"]
    assert a["subject"] is b["subject"] is c["subject"]


def test_a_code_that_is_not_a_codeable_concept_is_read_whole() -> None:
    """A ``code`` or ``subject`` of another shape (a string, null) makes its resource be parsed whole, as before."""
    for odd in ({"code": "2276-4"}, {"code": None}, {"subject": "Patient/pat-1"}, {"component": [{"code": 1}]}):
        bad = ferritin(300, meta={"v": 1}) | odd
        entries = prefetched(hook_request([ferritin(200), bad]), "observations")["entry"]
        assert entries[1]["resource"] == bad, odd
        assert "meta" not in entries[0]["resource"]


# -- originals: validation and provenance ----------------------------------------------------------------------


def test_every_pruned_resource_keeps_its_original_json() -> None:
    """The original JSON of each pruned resource (a Patient on its own, each entry of a Bundle) is the resource as
    the client sent it, unknown fields included."""
    chart_patient = patient(name=[{"family": "Keep"}], meta={"versionId": "7"})
    observations_ = [ferritin(300, note=[{"text": "a"}]), nxp2_positive(performer=[{"display": "Lab"}])]
    found = decoded(hook_request([chart_patient, *observations_]))
    resources = PrunedResources(found.document["prefetch"].values(), originals=found.originals)
    pruned_patient = found.document["prefetch"]["patient"]
    assert "name" not in pruned_patient
    assert resources.original(pruned_patient) == chart_patient
    entries = found.document["prefetch"]["observations"]["entry"]
    assert [resources.original(e["resource"]) for e in entries] == observations_


def test_the_deciding_resource_is_validated_on_its_original_json(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ferritin result that is invalid R4 only in fields the mappings never read (a performer that is not a
    list of References) is skipped as invalid, as before: validation reads the JSON the client sent."""
    invalid = ferritin(900, performer="Dr Who")
    chart = [patient(), nxp2_positive(), condition("M33.00"), invalid]
    pruned, read_whole = answers(make_app(), monkeypatch, orjson.dumps(hook_request(chart)))
    assert pruned == read_whole
    cards = orjson.loads(pruned[1])["cards"]
    assert cards
    assert all(c["extension"]["nxp2-cds.assessment"]["counts"]["skipped"].get("invalid-r4-observation") for c in cards)


def test_validation_sees_what_pruning_dropped(engine: Engine) -> None:
    """The validator is given the original resource, not the pruned one: a field pruning drops is validated."""
    invalid = ferritin(900, performer="Dr Who")
    found = decoded(hook_request([patient(), nxp2_positive(), condition("M33.00"), invalid]))
    resources = PrunedResources(found.document["prefetch"].values(), originals=found.originals)
    pruned = found.document["prefetch"]["observations"]["entry"][1]["resource"]
    assert "performer" not in pruned
    assert engine.reader.validator.problem(pruned) is None
    assessment = engine.assess(resources, patient_id=PID, at=AT)
    assert assessment.findings.skipped.get(SkipReason.INVALID_R4_OBSERVATION) == 1


def test_provenance_is_the_same(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each predictor's provenance in the card (reference, date and value as recorded, code text, unit) is the
    same pruned as read whole, including references made from a Bundle's fullUrl."""
    no_id = ferritin(450, meta={"x": 1})
    del no_id["id"]
    document = hook_request([patient(), nxp2_positive(), condition("M33.02"), condition("R60.0")])
    document["prefetch"]["observations"]["entry"].append({"fullUrl": "http://ehr.example.org/f/1", "resource": no_id})
    pruned, read_whole = answers(make_app(), monkeypatch, orjson.dumps(document))
    assert pruned == read_whole
    provenance = [
        p["provenance"]
        for c in orjson.loads(pruned[1])["cards"]
        for p in c["extension"]["nxp2-cds.assessment"]["predictors"]
    ]
    assert any(s["reference"].startswith("http://ehr.example.org/") for p in provenance for s in p)


def test_a_condition_abated_under_any_key_reads_as_before(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Condition is inactive when it has any key starting with ``abatement`` (even one no R4 resource has, on a
    resource that is then invalid): read on the original JSON, so pruning changes nothing."""
    document = hook_request(
        [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0", clinical=None, abatementWhen="x")]
    )
    pruned, read_whole = answers(make_app(), monkeypatch, orjson.dumps(document))
    assert pruned == read_whole


def test_an_unreadable_value_is_shown_as_sent(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid result whose only value is under a key no R4 resource has (``valueFoo``) is shown "as written"
    exactly as before: the unreadable path reads the original JSON."""
    document = hook_request([patient(), nxp2_positive(), condition("M33.00"), obs("2276-4", valueFoo="lots")])
    pruned, read_whole = answers(make_app(), monkeypatch, orjson.dumps(document))
    assert pruned == read_whole
    assert b"lots" in pruned[1]


# -- numbers beyond a double: the one deliberate difference ----------------------------------------------------


def _with_number(document: Json, placeholder: str, number: bytes) -> bytes:
    return orjson.dumps(document).replace(f'"{placeholder}"'.encode(), number)


@pytest.mark.parametrize("number", [b"1e400", b"9" * 400])
def test_a_number_beyond_a_double_in_a_read_field_is_a_400(number: bytes) -> None:
    """In a field the mappings read, a number orjson cannot read is the same 400 as before."""
    body = _with_number(hook_request([patient(), obs("2276-4", valueQuantity={"value": "N"})]), "N", number)
    with pytest.raises(BadRequest) as raised:
        decode.hook_body(body, KEYS)
    with pytest.raises(BadRequest) as reference:
        decode.loads(body)
    assert str(raised.value) == str(reference.value)


def test_a_number_beyond_a_double_in_a_deciding_resource_is_a_400(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a field nobody reads of a resource that decides a predictor (its whole JSON is validated), a number orjson
    cannot read is the same 400 as before."""
    document = hook_request([patient(), nxp2_positive(meta={"n": "N"}), condition("M33.00")])
    pruned, read_whole = answers(make_app(), monkeypatch, _with_number(document, "N", b"1e400"))
    assert pruned == read_whole
    assert pruned[0] == 400


def test_a_number_beyond_a_double_in_an_unread_resource_is_skipped(make_app: AppFactory) -> None:
    """In a resource the mappings skip unread (a heart rate), a number orjson cannot read (valid JSON all the same)
    is skipped with the rest of it: the answer is the one without that field, where orjson refused the body."""
    heart_rate = obs("8867-4", **qty(90, "/min"), meta={"n": "N"})
    document = hook_request([patient(), nxp2_positive(), condition("M33.00"), heart_rate])
    app = make_app()
    beyond = app.test_client().post(
        SERVICE_URL, data=_with_number(document, "N", b"1e400"), content_type="application/json"
    )
    heart_rate["meta"] = {}
    plain = app.test_client().post(SERVICE_URL, data=orjson.dumps(document), content_type="application/json")
    assert beyond.status_code == 200
    assert beyond.get_data() == plain.get_data()


# -- the prefetch as resolve and the mappings read it -----------------------------------------------------------


def test_paging_links_are_kept() -> None:
    """A Bundle's ``next`` link is kept, so a prefetched Bundle with more pages is still completed from the FHIR
    server."""
    bundle = searchset(ferritin(300)) | {"link": [{"relation": "next", "url": "https://ehr.example.org/p2"}]}
    found = prefetched(hook_request([patient()]) | {"prefetch": {"observations": bundle}}, "observations")
    assert found["link"] == bundle["link"]


def test_an_operation_outcome_prefetch_is_recognised() -> None:
    """An OperationOutcome given as a prefetch value (the client's "fetch it yourself") keeps its type."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    found = prefetched(hook_request([patient()]) | {"prefetch": {"conditions": outcome}}, "conditions")
    assert found == {"resourceType": "OperationOutcome"}


def test_resolved_resources_carry_the_originals(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resources handed to the engine are a :class:`PrunedResources` that knows each pruned resource's
    original JSON (what validation and provenance read)."""
    seen: list[Any] = []
    engine = app.extensions["nxp2_cds"].engine
    real: Callable[..., Any] = engine.assess

    def spy(resources: Any, **kw: Any) -> Any:
        seen.append(resources)
        return real(resources, **kw)

    monkeypatch.setattr(engine, "assess", spy)
    body = orjson.dumps(hook_request([patient(meta={"v": "1"}), nxp2_positive()]))
    assert app.test_client().post(SERVICE_URL, data=body, content_type="application/json").status_code == 200
    (resources,) = seen
    assert isinstance(resources, PrunedResources)
    pruned_patient = next(r for r in resources if r.get("resourceType") == "Patient")
    assert resources.original(pruned_patient)["meta"] == {"v": "1"}


def test_modifier_extensions_survive_pruning(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A modifier extension on a result, a component or a Condition is kept by the pruned reading, so the hook skips
    those resources exactly as the whole reading does (the anti-NXP2 positive on a modified result gives no risk
    card either way)."""
    flag = [{"url": "http://hospital.example.org/fhir/StructureDefinition/not-performed", "valueBoolean": True}]
    chart = [
        patient(),
        nxp2_positive(modifierExtension=flag),
        condition("M33.00", rid="jdm"),
        condition("R60.0", rid="edema", modifierExtension=flag),
        obs("2276-4", rid="fer", **qty(900, "ng/mL"), referenceRange=[{"text": "x", "modifierExtension": flag}]),
    ]
    body = orjson.dumps(hook_request(chart))
    pruned, read_whole = answers(app, monkeypatch, body)
    assert pruned == read_whole
    counts = orjson.loads(pruned[1])["cards"][0]["extension"]["nxp2-cds.assessment"]["counts"]
    assert counts["skipped"]["modifier-extension"] == 3
