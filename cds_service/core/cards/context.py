"""What the cards need from the request besides the assessment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CardContext:
    """What the cards need from the request besides the assessment."""

    hook_instance: str
    patient_id: str
    user_id: str | None = None
    evidence_url: str | None = None
    """Absolute URL of the service's evidence page; when given, every card links to it."""
    language: str | None = None
    """The cards' language (a BCP 47 tag; ``None``: the site's default, which the engine fills in)."""
