"""Bundles flattened: whatever the caller hands in (resources, searchset or collection Bundles, Bundles of Bundles)
becomes one list of ``(resource, fullUrl)``; anything that is not a resource is kept as ``(None, the thing)`` so it
is counted as malformed, never silently lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Json = dict[str, Any]

MAX_BUNDLE_DEPTH = 4
"""Bundles nested deeper than this are not unpacked (counted malformed): no server nests that deep."""


def flatten(inputs: Iterable[object]) -> list[tuple[Json | None, Any]]:
    """``(resource, fullUrl)`` for every resource, Bundles unpacked (nested up to a small depth). Anything that is
    not a resource gives ``(None, the thing)``."""
    out: list[tuple[Json | None, Any]] = []
    for item in inputs:
        _unpack(item, None, 0, out)
    return out


def _unpack(item: object, full_url: str | None, depth: int, out: list[tuple[Json | None, Any]]) -> None:
    if not isinstance(item, dict):
        out.append((None, item))
        return
    rtype = item.get("resourceType")
    if rtype != "Bundle":
        out.append((item, full_url) if isinstance(rtype, str) else (None, item))
        return
    entries = item.get("entry")
    if depth >= MAX_BUNDLE_DEPTH or (entries is not None and not isinstance(entries, list)):
        out.append((None, item))
        return
    for entry in entries or ():
        if not isinstance(entry, dict):
            out.append((None, entry))
            continue
        resource = entry.get("resource")
        if resource is None:
            continue  # e.g. a transaction-response entry: nothing to read
        url = entry.get("fullUrl")
        if isinstance(resource, dict) and resource.get("resourceType") != "Bundle":
            rtype = resource.get("resourceType")
            out.append(
                (resource, url if isinstance(url, str) else None) if isinstance(rtype, str) else (None, resource)
            )
        else:
            _unpack(resource, url if isinstance(url, str) else None, depth + 1, out)
