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
    ABSENT = "absent"
    UNKNOWN = "unknown"


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
    basis: str = "no-data"
    """Why the state is what it is, as a code (``reported``, ``computed``, ``condition``, ``observation``,
    ``condition-despite-later-observation``, ``condition-history``, ``condition-resolved``, ``condition-refuted``,
    ``suspected``, ``not-recorded``, ``equivocal``, ``conflicting``, ``pending``, ``implausible``, ``unpaired``,
    ``outside-lookback``, ``no-data``, ``unreadable``); cards turn it into words from the knowledge base."""
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
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Resources that were not used, counted by reason (``unrelated``, ``other-patient``,
    ``observation-status-preliminary``, ``superseded``, …): ``resources_seen == resources_used +
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
