"""The suite's one engine cache.

:func:`shared_engine` is the engine exactly as the service loads it with the default configuration, or with a
site's ``[mappings.local_codes]``; each distinct set of local codes is loaded once for the whole session. The
``engine`` fixture (tests/conftest.py) is the default one; code that runs where no fixture reaches (hypothesis
tests, tables of cases built at collection time) calls :func:`shared_engine` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

from cds_service.core.engine import Engine

LocalCodes = tuple[tuple[str, tuple[str, ...]], ...]


@cache
def _load(local_codes: LocalCodes) -> Engine:
    return Engine.load(local_codes={key: list(codes) for key, codes in local_codes})


def shared_engine(local_codes: Mapping[str, Sequence[str]] | None = None) -> Engine:
    """The engine for these local codes (none: the default configuration), loaded on first use."""
    return _load(tuple(sorted((key, tuple(codes)) for key, codes in (local_codes or {}).items())))
