"""Pydantic models of the CDS Hooks 2.0 wire format that the service reads.

Requests are validated here and nowhere else. Prefetch values are *not* modelled: they are FHIR resources,
read by ``fhir_mappings`` straight from JSON (validating a whole chart with pydantic would be slow and is not
needed to use it); the hook decodes them to just the fields the mappings read (:mod:`cds_service.web.decode`), and
the envelope validated here is exactly what it was. Requests from CDS Hooks 1.0 clients fit the same models.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
USER_REFERENCE = r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"

# -- bounds on what feedback stores --------------------------------------------------------------------------
#
# A NUL character (U+0000) or a lone surrogate in a feedback string is refused (400), not stripped: PostgreSQL
# cannot store NUL in text (the write failed with a 500 before this check), and no encoding holds a lone
# surrogate. Stripping would silently change what the client sent: two different card ids ("a\u0000b", "ab")
# could become one and a duplicate, and the client would never learn that it sends broken strings. Legitimate
# feedback never holds either character, so refusing costs nothing and says exactly what is wrong.
_UNSTORABLE = re.compile("[\u0000\ud800-\udfff]")


def _storable(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL (U+0000) or unpaired surrogate characters")
    return value


StoredText = Annotated[str, AfterValidator(_storable)]

_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def _timestamp_text(value: object) -> object:
    """``outcomeTimestamp`` is a JSON string (CDS Hooks: an ISO-8601 dateTime), never a number of seconds."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO-8601 date-time string with a time zone")
    return value


def _in_calendar(value: datetime) -> datetime:
    """The instant in UTC; refused when it is not representable there (``0001-01-01T00:00:00+01:00`` is in the
    year 0 in UTC) or within a day of the calendar's ends (every later date arithmetic on it must stay safe)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the range of dates this service can store") from None
    if not _EARLIEST <= utc <= _LATEST:
        raise ValueError("is outside the range of dates this service can store")
    return utc


OutcomeTimestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(_in_calendar)]


class FhirAuthorization(BaseModel):
    """The OAuth 2.0 access token the client grants the service for its FHIR server. Never logged."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    access_token: str = Field(min_length=1, repr=False)
    token_type: str
    expires_in: int = Field(ge=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be 'Bearer'")
        return "Bearer"


class HookRequest(BaseModel):
    """A CDS Hooks service request (any hook); the context is checked per hook."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    hook: str = Field(min_length=1, max_length=128)
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(default=None, min_length=1, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _authorization_needs_server(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization requires fhirServer")
        return self


class PatientViewContext(BaseModel):
    """``patient-view`` context (CDS Hooks library, hookVersion 1.0)."""

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

    userId: str = Field(pattern=USER_REFERENCE)
    patientId: str = Field(pattern=FHIR_ID)
    encounterId: str | None = Field(default=None, pattern=FHIR_ID)


class Coding(BaseModel):
    """CDS Hooks 2.0 Coding."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    system: StoredText = Field(min_length=1, max_length=1024)
    code: StoredText = Field(min_length=1, max_length=256)
    display: StoredText | None = Field(default=None, min_length=1, max_length=1024)


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: Coding | None = None
    userComment: StoredText | None = Field(default=None, min_length=1, max_length=4000)


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StoredText = Field(min_length=1, max_length=128)


class FeedbackItem(BaseModel):
    """One feedback entry (CDS Hooks 2.0 §Feedback)."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    card: StoredText = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: tuple[AcceptedSuggestion, ...] | None = Field(default=None, min_length=1, max_length=100)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: OutcomeTimestamp
    """Normalised to UTC here, so storing it never converts an edge-of-calendar value."""
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when the outcome is 'accepted'")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    feedback: tuple[FeedbackItem, ...] = Field(min_length=1, max_length=1000)


# -- responses (documented in /openapi.json; the service builds them as plain JSON for speed) ---------------


class Source(BaseModel):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None


class Card(BaseModel):
    uuid: str | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = Field(
        default=None, description="'nxp2-cds.assessment': the assessment behind the card (see the README)."
    )


class ServiceResponse(BaseModel):
    cards: list[Card]
    systemActions: list[Action] | None = None


class Service(BaseModel):
    hook: str
    id: str
    title: str | None = None
    description: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(BaseModel):
    services: list[Service]


class FeedbackAcknowledgement(BaseModel):
    received: int
    stored: int
    duplicates: int


class OperationOutcomeIssue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str | None = None
    expression: list[str] | None = None


class OperationOutcome(BaseModel):
    resourceType: Literal["OperationOutcome"]
    issue: list[OperationOutcomeIssue]
