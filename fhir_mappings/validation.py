"""FHIR R4 validation of the resources the mapping reads, with fhir.resources (``fhir.resources.R4B``).

Validation is the costliest step per resource (~0.1 ms), so results are remembered by content: a resource seen
before — the same chart opened again, by the same or another clinician — is not validated again. The memory is
bounded and forgotten at once when full; keys are BLAKE2b digests of the canonical JSON, so only an identical
resource can reuse a result.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import Any

import orjson
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from .model import SkipReason

MODELS: Mapping[str, Any] = {"Observation": Observation, "Condition": Condition, "Patient": Patient}
MAX_RESOURCE_DEPTH = 48
"""A resource nested deeper than this (extensions of extensions …) is refused before validation: no FHIR R4
resource needs it, and it keeps deeply nested input from exhausting the validator's recursion."""
DEFAULT_MEMORY = 50_000


class ResourceValidator:
    def __init__(self, memory: int = DEFAULT_MEMORY) -> None:
        self._memory = memory
        self._known: dict[bytes, SkipReason | None] = {}
        self._lock = threading.Lock()

    def problem(self, resource: dict[str, Any]) -> SkipReason | None:
        """``None`` when ``resource`` (an Observation, Condition or Patient) is valid FHIR R4; else the reason it is
        skipped (``too-deep``, ``invalid-r4-observation``, …)."""
        try:
            key = hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        except (TypeError, orjson.JSONEncodeError):  # nested beyond orjson's limit, or not JSON at all
            return SkipReason.TOO_DEEP if deeper_than(resource, MAX_RESOURCE_DEPTH) else self._validate(resource)
        if key in self._known:
            return self._known[key]
        found = SkipReason.TOO_DEEP if deeper_than(resource, MAX_RESOURCE_DEPTH) else self._validate(resource)
        with self._lock:
            if len(self._known) >= self._memory:
                self._known.clear()
            self._known[key] = found
        return found

    @staticmethod
    def _validate(resource: dict[str, Any]) -> SkipReason | None:
        rtype = resource["resourceType"]
        try:
            MODELS[rtype].model_validate(resource)
        except (ValueError, TypeError, KeyError, AttributeError, LookupError, RecursionError):
            return SkipReason.invalid(str(rtype))
        return None


def deeper_than(document: object, limit: int) -> bool:
    """Whether nested dicts/lists go deeper than ``limit`` (iterative: safe on any input)."""
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False
