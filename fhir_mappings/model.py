"""What the mapping stage produces: one finding per predictor, with its provenance.

Everything here is an immutable value: no I/O, no clock. ``PatientFindings`` is the whole output of
:func:`fhir_mappings.extract_findings` for one patient at one evaluation time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


class State(StrEnum):
    """A predictor is present, absent, or unknown. Unknown is never absent."""

    PRESENT = "present"
    """The predictor is met."""
    ABSENT = "absent"
    """Recorded, and not met."""
    UNKNOWN = "unknown"
    """Not known (the basis says why); never lowers a tier."""


class Basis(StrEnum):
    """Why a finding has its state: the extension's ``predictors[].basis``. Cards turn each into words from the
    knowledge base (``config/knowledge.toml`` ``[wording.basis]``, which must word every member)."""

    REPORTED = "reported"
    """A result as the laboratory or clinician reported it."""
    COMPUTED = "computed"
    """Computed from two results taken close together (CD4/CD8, weight and height)."""
    CONDITION = "condition"
    """An active, confirmed (or unstated) Condition."""
    OBSERVATION = "observation"
    """A finding recorded as an Observation (present or absent)."""
    CONDITION_DESPITE_LATER_OBSERVATION = "condition-despite-later-observation"
    """An active Condition, though a later Observation records the finding absent: the Condition wins, both shown."""
    CONDITION_HISTORY = "condition-history"
    """An inactive Condition, for a finding whose history counts (ILD)."""
    CONDITION_RESOLVED = "condition-resolved"
    """Recorded absent: the Condition is inactive, in remission, resolved or abated."""
    CONDITION_REFUTED = "condition-refuted"
    """Recorded absent: the Condition is refuted."""
    SUSPECTED = "suspected"
    """Unknown: the Condition is unconfirmed, provisional or differential."""
    NOT_RECORDED = "not-recorded"
    """Unknown: an examination or finding nobody recorded either way (examine at this visit)."""
    EQUIVOCAL = "equivocal"
    """Unknown: the newest result is borderline or indeterminate."""
    CONFLICTING = "conflicting"
    """Unknown: results of the same date disagree (rules with ``on_conflict = "unknown"``)."""
    PENDING = "pending"
    """Unknown: the newest result is preliminary or registered."""
    IMPLAUSIBLE = "implausible"
    """Unknown: the value is outside the rule's plausible range after unit conversion (shown, never used)."""
    UNPAIRED = "unpaired"
    """Unknown: the two results a value is computed from were not taken close enough together."""
    OUTSIDE_LOOKBACK = "outside-lookback"
    """Unknown: the newest result is older than the look-back window."""
    NO_DATA = "no-data"
    """Unknown: no result at all."""
    UNREADABLE = "unreadable"
    """Unknown: a result whose value could not be read (shown as written)."""


class SkipReason(StrEnum):
    """Why a resource was not used: the keys of the extension's ``counts.skipped``. A closed vocabulary (status
    codes a feed writes are mapped onto it, never echoed), so the counts stay a bounded, documented set."""

    UNRELATED = "unrelated"
    """No predictor's value set (or name pattern) matches it, or it is not an Observation, Condition or Patient."""
    OTHER_PATIENT = "other-patient"
    """Its subject (or the Patient resource) is another patient."""
    NO_SUBJECT = "no-subject"
    """It names no subject, so it cannot be this patient's."""
    DUPLICATE = "duplicate"
    """The same ``resourceType/id`` seen before in the request."""
    MODIFIER_EXTENSION = "modifier-extension"
    """It (or a component or reference range) carries a modifier extension: FHIR says it shall not be processed."""
    PANEL_LEVEL_RESULT = "panel-level-result"
    """A multi-antibody panel's own value or interpretation: never decides one antibody."""
    OBSERVATION_STATUS_REGISTERED = "observation-status-registered"
    """Registered, no result yet: never counted; the predictor says "pending"."""
    OBSERVATION_STATUS_PRELIMINARY = "observation-status-preliminary"
    """Preliminary: never counted; the predictor says "pending"."""
    OBSERVATION_STATUS_FINAL = "observation-status-final"
    """Final, where the site's rules do not count final results."""
    OBSERVATION_STATUS_AMENDED = "observation-status-amended"
    """Amended, where the site's rules do not count amended results."""
    OBSERVATION_STATUS_CORRECTED = "observation-status-corrected"
    """Corrected, where the site's rules do not count corrected results."""
    OBSERVATION_STATUS_CANCELLED = "observation-status-cancelled"
    """Cancelled: no result."""
    OBSERVATION_STATUS_ENTERED_IN_ERROR = "observation-status-entered-in-error"
    """Entered in error: no record."""
    OBSERVATION_STATUS_UNKNOWN = "observation-status-unknown"
    """The status is unknown."""
    OBSERVATION_STATUS_MISSING = "observation-status-missing"
    """No status."""
    OBSERVATION_STATUS_UNRECOGNISED = "observation-status-unrecognised"
    """A status that is not an R4 ObservationStatus code."""
    CONDITION_ENTERED_IN_ERROR = "condition-entered-in-error"
    """Entered in error: no record."""
    CONDITION_UNCONFIRMED = "condition-unconfirmed"
    """Unconfirmed, where the site's rules exclude that verification status."""
    CONDITION_PROVISIONAL = "condition-provisional"
    """Provisional, where the site's rules exclude it."""
    CONDITION_DIFFERENTIAL = "condition-differential"
    """Differential, where the site's rules exclude it."""
    CONDITION_CONFIRMED = "condition-confirmed"
    """Confirmed, where the site's rules exclude it."""
    CONDITION_REFUTED = "condition-refuted"
    """Refuted, where the site's rules exclude it (by default refuted means recorded absent)."""
    CONDITION_ACTIVE = "condition-active"
    """A clinical status the site's rules do not read (by default: present)."""
    CONDITION_RECURRENCE = "condition-recurrence"
    """A clinical status the site's rules do not read (by default: present)."""
    CONDITION_RELAPSE = "condition-relapse"
    """A clinical status the site's rules do not read (by default: present)."""
    CONDITION_INACTIVE = "condition-inactive"
    """A clinical status the site's rules do not read (by default: recorded absent)."""
    CONDITION_REMISSION = "condition-remission"
    """A clinical status the site's rules do not read (by default: recorded absent)."""
    CONDITION_RESOLVED = "condition-resolved"
    """A clinical status the site's rules do not read (by default: recorded absent)."""
    CONDITION_NO_CLINICAL_STATUS = "condition-no-clinical-status"
    """No clinical status (and not abated, refuted or suspected): no record."""
    CONDITION_STATUS_UNRECOGNISED = "condition-status-unrecognised"
    """A clinical or verification status that is not an R4 code (or one the site's rules exclude)."""
    UNREADABLE_DATE = "unreadable-date"
    """Its date is not a FHIR date."""
    FUTURE_DATED = "future-dated"
    """Dated after the evaluation time (beyond the rules' tolerance)."""
    NO_DATE = "no-date"
    """Undated, for a predictor with a look-back window."""
    OUTSIDE_LOOKBACK = "outside-lookback"
    """Older than the predictor's look-back window."""
    UNRECOGNISED_VALUE = "unrecognised-value"
    """A value the rules cannot read (the predictor shows it as written)."""
    NO_VALUE = "no-value"
    """No value."""
    UNIT_NOT_CONVERTIBLE = "unit-not-convertible"
    """A unit that does not convert to the rule's unit."""
    TOO_DEEP = "too-deep"
    """Nested deeper than any FHIR R4 resource needs: refused before validation."""
    INVALID_R4_OBSERVATION = "invalid-r4-observation"
    """Not a valid FHIR R4 Observation."""
    INVALID_R4_CONDITION = "invalid-r4-condition"
    """Not a valid FHIR R4 Condition."""
    INVALID_R4_PATIENT = "invalid-r4-patient"
    """Not a valid FHIR R4 Patient."""
    SUPERSEDED = "superseded"
    """A candidate a newer (or decisive) result made unnecessary."""
    NOT_EVALUATED = "not-evaluated"
    """A candidate of a predictor that was not evaluated (the chart was not eligible)."""

    @classmethod
    def observation_status(cls, status: object) -> SkipReason:
        """The reason for an Observation skipped for its ``status`` (any JSON value)."""
        if not isinstance(status, str):
            return cls.OBSERVATION_STATUS_MISSING
        return _BY_VALUE.get(f"observation-status-{status}", cls.OBSERVATION_STATUS_UNRECOGNISED)

    @classmethod
    def condition_status(cls, code: str | None) -> SkipReason:
        """The reason for a Condition skipped for a clinical or verification status ``code``."""
        return _BY_VALUE.get(f"condition-{code}", cls.CONDITION_STATUS_UNRECOGNISED)

    @classmethod
    def invalid(cls, resource_type: str) -> SkipReason:
        """The reason for a resource of ``resource_type`` (one the mappings read) that is not valid FHIR R4."""
        return _BY_VALUE.get(f"invalid-r4-{resource_type.lower()}", cls.UNRELATED)


_BY_VALUE: dict[str, SkipReason] = {m.value: m for m in SkipReason}
_BY_VALUE.pop(SkipReason.CONDITION_STATUS_UNRECOGNISED.value)
_BY_VALUE.pop(SkipReason.OBSERVATION_STATUS_UNRECOGNISED.value)
_BY_VALUE.pop(SkipReason.OBSERVATION_STATUS_MISSING.value)


@dataclass(frozen=True, slots=True)
class Source:
    """One datum a finding rests on, as recorded and as normalised."""

    reference: str
    """``ResourceType/id`` (or the Bundle ``fullUrl`` when the resource has no id)."""
    resource_type: str
    effective: str | None
    """The effective (or onset / recorded) date exactly as recorded."""
    concept: str
    """The value set (concept) the resource matched."""
    code_display: str | None
    value: str | None
    """The value as recorded, rendered as text (``"250 ng/mL"``, ``"1:160"``, ``"Positive"``)."""
    unit: str | None
    normalised_value: float | None = None
    normalised_unit: str | None = None
    code_text: str | None = None
    """The record's own name for the code (``code.text`` or a ``coding.display``); ``None`` when it has none
    (``code_display`` then falls back to the value set's title)."""


@dataclass(frozen=True, slots=True)
class PredictorFinding:
    """The state of one predictor for one patient, with everything it rests on."""

    id: str
    state: State
    value: float | str | bool | None = None
    """The deciding value, normalised (``float`` in ``unit`` for measurements, text for qualitative)."""
    unit: str | None = None
    effective: str | None = None
    """The effective date of the deciding datum, as recorded."""
    sources: tuple[Source, ...] = ()
    basis: Basis = Basis.NO_DATA
    """Why the state is what it is; cards turn it into words from the knowledge base."""
    basis_detail: Mapping[str, str] = field(default_factory=dict)

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(s.reference for s in self.sources)


@dataclass(frozen=True, slots=True)
class PatientFindings:
    """Every predictor's finding for one patient at one evaluation time."""

    patient_id: str
    evaluated_at: datetime
    birth_date: date | None
    age_years: int | None
    """Completed years at ``evaluated_at``; ``None`` when the birth date is unknown."""
    predictors: Mapping[str, PredictorFinding]
    resources_seen: int = 0
    resources_used: int = 0
    skipped: Mapping[SkipReason, int] = field(default_factory=dict)
    """Resources that were not used, counted by :class:`SkipReason`: ``resources_seen == resources_used +
    sum(skipped.values()) + malformed``."""
    malformed: int = 0
    """Items that were not FHIR resources at all."""
    patient_found: bool = True
    """Whether the chart held the Patient resource itself (without it, age cannot be known)."""
    sex: str | None = None
    """``Patient.gender`` when it is ``male`` or ``female``; ``other``, ``unknown`` or not recorded is ``None``
    (the WHO growth references are by sex, so BMI for age is then left out)."""

    def state(self, predictor_id: str) -> State:
        finding = self.predictors.get(predictor_id)
        return finding.state if finding is not None else State.UNKNOWN
