"""Reading a hook request body: the envelope exactly as before, the prefetch pruned to what the mappings read.

One msgspec pass over the body yields the envelope's fields and the prefetch values the templates name, each as
its JSON text (a zero-copy slice of the body); everything else is skipped unread.

- The envelope (``hook``, ``hookInstance``, ``fhirServer``, ``fhirAuthorization``, ``context``, ``extension``) is
  parsed with orjson, slice by slice, so :class:`~cds_service.protocol.HookRequest` validates the very values it
  validated before and answers with the same 400s.
- Each prefetch value is pruned (:mod:`fhir_mappings.pruned`): only the fields the mappings read become Python
  objects, and a resource that is not the shape they read falls back alone to being parsed whole, as before. The
  original JSON of every pruned resource is kept, for validating the resources that decide a predictor. Prefetch
  keys the templates do not name are left out: nothing reads them.

Where the body is not what this reading expects (not an object, invalid JSON, a prefetch that is not an object,
nesting deeper than msgspec goes) the whole body is read as before, with orjson, and gets the same answer as
before: the same document, or the same 400 with orjson's message. Invalid UTF-8 anywhere, even in a field nobody
reads, is refused first, as orjson refuses it.

One difference remains, deliberately: a number beyond the range of a double (``1e400``, an integer of 400 digits)
is valid JSON that orjson refuses. It is still a 400 wherever the service parses it — the envelope, the fields the
mappings read, the whole JSON of a resource that decides a predictor — but in a field of a resource the service
never reads, it is skipped unread instead of refusing the whole request.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypedDict, cast

import msgspec
import orjson

from cds_service.errors import BadRequest
from fhir_mappings.pruned import Originals, PrefetchDecoder, Unreadable
from fhir_mappings.pruned import loads as loads_piece

__all__ = ["HookBody", "Originals", "Unreadable", "hook_body", "loads"]

_UTF8_CHUNK = 1 << 16


_ENVELOPE_FIELDS = ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension")
"""The fields of a CDS Hooks request :class:`~cds_service.protocol.HookRequest` reads, besides ``prefetch``
(it ignores the others)."""


@functools.lru_cache(maxsize=16)
def _envelope(keys: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of the envelope's fields and of the prefetch values of ``keys``, each as its JSON text: one pass
    over the body, which skips everything else."""
    prefetch = TypedDict("Prefetch", dict.fromkeys(keys, msgspec.Raw), total=False)  # type: ignore[misc]
    fields: dict[str, Any] = dict.fromkeys(_ENVELOPE_FIELDS, msgspec.Raw) | {"prefetch": prefetch | None}
    return msgspec.json.Decoder(TypedDict("Envelope", fields, total=False))  # type: ignore[operator]


@dataclass(slots=True)
class HookBody:
    """A decoded hook request body."""

    document: Any
    """What :class:`~cds_service.protocol.HookRequest` validates: the request as orjson reads it, except that the
    prefetch values the templates name are pruned."""
    body: bytes | bytearray
    originals: Originals = field(default_factory=Originals)
    """The original JSON of every pruned resource (see :class:`fhir_mappings.pruned.PrunedResources`)."""
    pruned: bool = True
    """``False`` when the body was read whole, as before (then nothing is pruned)."""

    def refuse(self) -> NoReturn:
        """Answer as the whole body's reading answers (a piece of it turned out unreadable): orjson's 400."""
        loads(self.body)
        raise BadRequest("The request body is not valid JSON (a number is out of range).")


def loads(body: bytes | bytearray) -> Any:
    """The whole body, parsed with orjson (feedback; a hook request the selective reading leaves to it)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).") from exc


def hook_body(body: bytes | bytearray, keys: Collection[str]) -> HookBody:
    """Decode a hook request: the envelope as orjson reads it, the prefetch values of ``keys`` (the templates)
    pruned; other prefetch keys are left out (nothing reads them). Raises :class:`BadRequest` exactly where
    reading the whole body with orjson does."""
    if not body.isascii() and not _utf8(body):
        return HookBody(loads(body), body, pruned=False)  # orjson refuses it, with its message
    try:
        envelope = cast("dict[str, Any]", _envelope(tuple(keys)).decode(body))
    except (msgspec.DecodeError, RecursionError):  # not an object, not JSON, a prefetch that is not an object
        return HookBody(loads(body), body, pruned=False)  # or nested deeper than msgspec goes: as before
    originals = Originals()
    values = PrefetchDecoder(originals)
    try:
        document: dict[str, Any] = {}
        for name, raw in envelope.items():
            if name != "prefetch":
                document[name] = loads_piece(raw)
            elif raw is None:
                document[name] = None
            else:
                document[name] = {key: values.node(value) for key, value in raw.items()}
    except Unreadable:
        return HookBody(loads(body), body, pruned=False)
    return HookBody(document, body, originals)


def _utf8(body: bytes | bytearray) -> bool:
    """Whether ``body`` is valid UTF-8 (in chunks: no copy of the body as text)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(body), _UTF8_CHUNK):
            decoder.decode(view[start : start + _UTF8_CHUNK])
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True
