"""Units of measure: what unit a FHIR Quantity is in, and conversion factors between UCUM units.

UCUM parsing and conversion are done by ``ucumvert`` (a UCUM grammar on top of pint). Its registry is built once,
lazily; every conversion factor is computed once per ``(from, to)`` pair and cached, so the hot path costs one
dictionary lookup. Free-text units (``"ng/ml"``, ``"lbs"``) are mapped to UCUM through the aliases a
:class:`UnitConverter` is given (they live in the knowledge base, not here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"
_ANNOTATION_ONLY = re.compile(r"^\{[^{}]*\}$")


@cache
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@cache
def _pint_unit(ucum: str) -> Any | None:
    if ucum in ("", "1") or _ANNOTATION_ONLY.match(ucum):
        return _registry().dimensionless
    try:
        unit = _registry().from_ucum(ucum)
    except Exception:  # ucumvert raises its own and lark's exceptions for anything it cannot parse
        return None
    return unit if hasattr(unit, "dimensionality") else None


@cache
def conversion_factor(from_ucum: str, to_ucum: str) -> float | None:
    """The factor ``f`` with ``value_in_to = value_in_from * f``, or ``None`` when the units are not
    commensurable (or not UCUM)."""
    if from_ucum == to_ucum:
        return 1.0
    source = _pint_unit(from_ucum)
    target = _pint_unit(to_ucum)
    if source is None or target is None:
        return None
    try:
        return float(_registry().Quantity(1.0, source).to(target).magnitude)
    except Exception:  # pint's DimensionalityError and friends
        return None


def warm_up() -> None:
    """Build the UCUM registry now (about a second) rather than on the first request that needs it."""
    conversion_factor("[lb_av]", "kg")


def is_ucum(unit: str) -> bool:
    return _pint_unit(unit) is not None


class UnitConverter:
    """Reads the unit of a Quantity and converts values, with a site's free-text aliases."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self._aliases = {k.strip().lower(): v for k, v in (aliases or {}).items()}

    def ucum_of(self, quantity: Mapping[str, Any]) -> str | None:
        """The UCUM unit of a Quantity. Tried in order: ``code`` (when ``system`` is UCUM or absent), then the
        human-readable ``unit``; each through the aliases first, then as UCUM itself."""
        candidates: list[str] = []
        code = quantity.get("code")
        if isinstance(code, str) and code.strip() and quantity.get("system") in (None, UCUM_SYSTEM):
            candidates.append(code.strip())
        unit = quantity.get("unit")
        if isinstance(unit, str) and unit.strip():
            candidates.append(unit.strip())
        for candidate in candidates:
            alias = self._aliases.get(candidate.lower())
            if alias is not None:
                return alias
            if is_ucum(candidate):
                return candidate
        return None

    @staticmethod
    def convert(value: float, from_ucum: str, to_ucum: str) -> float | None:
        factor = conversion_factor(from_ucum, to_ucum)
        return None if factor is None else value * factor
