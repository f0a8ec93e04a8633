"""FHIR JSON decoded to only the fields the mappings read, with the original JSON kept beside it.

A chart is mostly fields no rule reads (narrative, ``meta``, identifiers, performers, notes, extensions). msgspec
skips them in C; what is kept is plain JSON (dicts, lists, strings, numbers), so :mod:`fhir_mappings.extract`
reads a pruned resource exactly as it reads a whole one. The types below are the contract: every field the
mappings read (``extract``, ``dates``, ``terminology``, ``values``, ``units``), with the JSON type they read it as.

Exactness. A pruned resource is its original restricted to these fields, value for value:

- a field of another JSON type than the one declared here (a number where a string is read, ``null``, an integer
  beyond the 64-bit range orjson keeps exact) fails the pruned decode, and that resource alone falls back to being
  parsed whole, as before (``orjson``): bad data is read exactly as it always was;
- fields read only for their presence (``hasMember``, ``dataAbsentReason``, ``valueRange`` …) are kept as empty
  objects (:class:`Present`): their content is never read;
- what depends on fields *not* listed here — the FHIR R4 validation, and the two places that look at keys by
  prefix on resources that may be invalid (``abatement*`` of a Condition, ``value*`` of an unreadable result) —
  reads the original JSON (:meth:`PrunedResources.original`). A valid R4 resource has no other keys (the models
  forbid extra fields), so for the rest the pruned keys are all the keys.

Sharing. A chart repeats a few hundred codes and one subject thousands of times. Equal ``code`` and ``subject``
JSON (byte for byte) decode to one shared object: less memory, and the mappings' lookups hash each code's strings
once and can remember a code's concepts by identity. Nothing reads a resource to change it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypedDict

import msgspec
import orjson

Json = dict[str, Any]

Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""A JSON integer orjson also keeps as an ``int`` (beyond it orjson gives a float: the decode falls back)."""
Number = Int | float


class Present(TypedDict, total=False):
    """An object read only for being there: decoded as ``{}`` (its content is skipped)."""


class Coding(TypedDict, total=False):
    system: str
    code: str
    display: str


class CodeableConcept(TypedDict, total=False):
    coding: list[Coding]
    text: str


class Reference(TypedDict, total=False):
    reference: str


class Quantity(TypedDict, total=False):
    """Quantity, SimpleQuantity and Age (``onsetAge``)."""

    value: Number
    comparator: str
    unit: str
    system: str
    code: str


class Ratio(TypedDict, total=False):
    numerator: Quantity
    denominator: Quantity


class Period(TypedDict, total=False):
    start: str
    end: str


class ReferenceRange(TypedDict, total=False):
    high: Quantity
    text: str
    modifierExtension: list[Present]


class _Values(TypedDict, total=False):
    """What an Observation and each of its components hold: every ``value[x]`` (``has_value`` and ``raw_value`` of
    ``extract.written`` see them all) and what a value is judged by."""

    valueQuantity: Quantity
    valueCodeableConcept: CodeableConcept
    valueString: str
    valueBoolean: bool
    valueInteger: Int
    valueRange: Present
    valueRatio: Ratio
    valueSampledData: Present
    valueTime: str
    valueDateTime: str
    valuePeriod: Present
    dataAbsentReason: Present
    interpretation: list[CodeableConcept]
    referenceRange: list[ReferenceRange]
    modifierExtension: list[Present]
    """Read for being there: a resource (or component) that carries one is skipped."""


class _Fields(_Values, total=False):
    """Patient, Observation and Condition fields the mappings read, but ``code``, ``subject`` and ``component``
    (other resource types: ``resourceType`` and ``id``, for counting and duplicates)."""

    resourceType: str
    id: str
    # Observation
    status: str
    specimen: Reference
    hasMember: list[Present]
    effectiveDateTime: str
    effectiveInstant: str
    effectivePeriod: Period
    issued: str
    # Condition (``abatement[x]`` is read from the original: see the module docstring)
    clinicalStatus: CodeableConcept
    verificationStatus: CodeableConcept
    onsetDateTime: str
    onsetPeriod: Period
    onsetAge: Quantity
    recordedDate: str
    # Patient
    birthDate: str
    gender: str


class BundleLink(TypedDict, total=False):
    relation: str
    url: str


class Component(_Values, total=False):
    code: CodeableConcept


class Resource(_Fields, total=False):
    """A pruned resource, as the mappings read it."""

    code: CodeableConcept
    subject: Reference
    component: list[Component]


class Entry(TypedDict, total=False):
    fullUrl: str
    resource: Node


class Node(Resource, total=False):
    """A pruned prefetch value or Bundle entry: a resource, or a Bundle (``entry``, and ``link`` for paging; a
    Bundle in a Bundle is pruned as well)."""

    entry: list[Entry]
    link: list[BundleLink]


# -- what msgspec decodes: ``code`` and ``subject`` as JSON text, then shared (see _Share) ---------------------


class _RawComponent(_Values, total=False):
    code: msgspec.Raw


class _RawEntry(TypedDict, total=False):
    fullUrl: str
    resource: _RawNode


class _RawNode(_Fields, total=False):
    code: msgspec.Raw
    subject: msgspec.Raw
    component: list[_RawComponent]
    entry: list[_RawEntry]
    link: list[BundleLink]


class _TextEntry(TypedDict, total=False):
    fullUrl: str
    resource: msgspec.Raw


class _Shallow(_RawNode, total=False):
    """A Bundle whose entries are left as JSON text, to be decoded one by one."""

    entry: list[_TextEntry]  # type: ignore[misc]


class _Entries(TypedDict, total=False):
    """The JSON text of each entry of a Bundle, in order."""

    entry: list[msgspec.Raw]


_NODE = msgspec.json.Decoder(_RawNode)
_SHALLOW = msgspec.json.Decoder(_Shallow)
_ENTRIES = msgspec.json.Decoder(_Entries)
_ENTRY = msgspec.json.Decoder(_TextEntry)
_CODE = msgspec.json.Decoder(CodeableConcept)
_REFERENCE = msgspec.json.Decoder(Reference)
_resource_of = operator.methodcaller("get", "resource")


class Unreadable(ValueError):
    """A piece of the request that orjson refuses. The pieces were valid JSON to msgspec, so the cause is a number
    beyond a double's range (orjson refuses it): the caller answers as it did for the whole body, a 400."""


def loads(raw: msgspec.Raw | bytes) -> Any:
    """``orjson.loads`` of a Raw slice (the legacy reading of one piece)."""
    try:
        return orjson.loads(memoryview(raw) if isinstance(raw, msgspec.Raw) else raw)
    except orjson.JSONDecodeError as exc:
        raise Unreadable(str(exc)) from exc


class Originals:
    """The original JSON of pruned resources, by ``id`` of the pruned resource: a zero-copy slice of the request
    body each. The entries of a Bundle pruned in one pass are matched with their JSON only when an original is
    first asked for (most resources never are)."""

    __slots__ = ("_bundles", "_entries", "_resources")

    def __init__(self) -> None:
        self._resources: dict[int, msgspec.Raw] = {}
        self._entries: dict[int, msgspec.Raw] = {}
        """Resources of Bundles pruned in one pass → the JSON of their entry (``{"fullUrl": …, "resource": …}``)."""
        self._bundles: list[tuple[Node, msgspec.Raw]] = []

    def add(self, resource: Mapping[str, Any], raw: msgspec.Raw) -> None:
        self._resources[id(resource)] = raw

    def add_bundle(self, bundle: Node, raw: msgspec.Raw) -> None:
        self._bundles.append((bundle, raw))

    def get(self, resource: Mapping[str, Any]) -> msgspec.Raw | None:
        """The JSON ``resource`` was pruned from; ``None`` when it was not pruned (it is its own original)."""
        key = id(resource)
        raw = self._resources.get(key)
        if raw is not None:
            return raw
        if self._bundles:
            bundles, self._bundles = self._bundles, []
            for bundle, sent in bundles:
                self._match(bundle, sent)
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        raw = self._resources[key] = _ENTRY.decode(entry)["resource"]
        return raw

    def _match(self, bundle: Node, raw: msgspec.Raw) -> None:
        entries = bundle.get("entry")
        if not entries:
            return
        sent = _ENTRIES.decode(raw)["entry"]
        resources = list(map(_resource_of, entries))
        self._entries.update(zip(map(id, resources), sent, strict=True))
        for index, resource in enumerate(resources):  # a Bundle in the Bundle: its own entries (rare)
            if resource is not None and resource.get("resourceType") == "Bundle":
                del self._entries[id(resource)]
                self._match(resource, _ENTRY.decode(sent[index])["resource"])


class PrunedResources(list[Any]):
    """The resources of one hook call (resources and Bundles, as :meth:`fhir_mappings.Reader.read` takes them),
    with the original JSON of every resource that was pruned. Resources that were not pruned (fallbacks, pages
    fetched from the FHIR server) are their own original."""

    def __init__(self, items: Iterable[Any] = (), originals: Originals | None = None) -> None:
        super().__init__(items)
        self.originals: Originals = originals if originals is not None else Originals()

    def original(self, resource: Json) -> Json:
        """The whole resource as the client sent it (parsed now: ask only for resources that matter). Raises
        :class:`Unreadable` when orjson refuses it."""
        raw = self.originals.get(resource)
        if raw is None:
            return resource
        found: Json = loads(raw)
        return found


class _Share:
    """Equal ``code`` / ``subject`` JSON → one decoded object (per request)."""

    __slots__ = ("codes", "references")

    def __init__(self) -> None:
        self.codes: dict[bytes, CodeableConcept] = {}
        self.references: dict[bytes, Reference] = {}

    def node(self, node: Any) -> bool:
        """Replace the JSON text of ``code`` and ``subject`` in ``node`` and everything in it (entries,
        components) by shared decoded objects; ``False`` when one is not the shape the mappings read."""
        if not self.fields(node):
            return False
        entries = node.get("entry")
        if entries:
            for entry in entries:
                resource = entry.get("resource")
                if resource is None:
                    continue
                if "entry" in resource:
                    if not self.node(resource):
                        return False
                elif not self.fields(resource):
                    return False
        return True

    def fields(self, resource: Any) -> bool:
        codes, references = self.codes, self.references
        try:
            text = resource.get("code")
            if text is not None:
                key = bytes(text)
                code = codes.get(key)
                if code is None:
                    code = codes[key] = _CODE.decode(text)
                resource["code"] = code
            text = resource.get("subject")
            if text is not None:
                key = bytes(text)
                subject = references.get(key)
                if subject is None:
                    subject = references[key] = _REFERENCE.decode(text)
                resource["subject"] = subject
            components = resource.get("component")
            if components:
                for component in components:
                    text = component.get("code")
                    if text is not None:
                        key = bytes(text)
                        code = codes.get(key)
                        if code is None:
                            code = codes[key] = _CODE.decode(text)
                        component["code"] = code
        except (msgspec.DecodeError, RecursionError):
            return False
        return True


class PrefetchDecoder:
    """Decodes the prefetch values of one request (one :class:`_Share` for all of them)."""

    __slots__ = ("originals", "share")

    def __init__(self, originals: Originals) -> None:
        self.originals = originals
        self.share = _Share()

    def node(self, raw: msgspec.Raw) -> Any:
        """A prefetch value (or an entry's resource), pruned, recording where its originals are. What is not the
        shape the mappings read is parsed whole, exactly as before: a resource alone, never its whole Bundle (a
        Bundle with one such entry is decoded entry by entry)."""
        try:
            node = _NODE.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return self._entry_by_entry(raw)
        if not self.share.node(node):
            return self._entry_by_entry(raw)
        if node.get("resourceType") == "Bundle":
            self.originals.add_bundle(node, raw)  # type: ignore[arg-type]
        else:
            self.originals.add(node, raw)
        return node

    def _entry_by_entry(self, raw: msgspec.Raw) -> Any:
        try:
            bundle = _SHALLOW.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return loads(raw)
        if bundle.get("resourceType") != "Bundle" or not self.share.fields(bundle):
            return loads(raw)
        for entry in bundle.get("entry", ()):
            resource = entry.get("resource")
            if resource is not None:
                entry["resource"] = self.node(resource)
        return bundle


def decode_node(raw: msgspec.Raw, originals: Originals) -> Any:
    """One prefetch value, pruned (see :meth:`PrefetchDecoder.node`); a request decodes all its values with one
    :class:`PrefetchDecoder`, so their codes are shared."""
    return PrefetchDecoder(originals).node(raw)
