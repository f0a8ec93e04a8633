"""The facade: :class:`Reader` (the rules' fixed set-up, built once), :class:`Chart` (one patient's resources read
once, predictors evaluated on demand) and :func:`extract_findings` (both in one call)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from ..dates import completed_years, parse_fhir_date
from ..model import PatientFindings, PredictorFinding, SkipReason
from ..pruned import PrunedResources
from ..rules import FindingRule, MappingRules
from ..terminology import Terminology
from ..units import UnitConverter
from ..validation import ResourceValidator
from ..values import AnswerSets
from .kinds import KINDS
from .run import Run, Setup
from .screening import collect


class Reader:
    """Everything about the rules that does not change between patients, computed once (the engine keeps one)."""

    def __init__(
        self,
        terminology: Terminology,
        rules: MappingRules,
        *,
        answers: AnswerSets | None = None,
        units: UnitConverter | None = None,
    ) -> None:
        wanted = rules.concepts()
        self.setup = Setup(
            terminology=terminology,
            rules=rules,
            answers=answers or AnswerSets(),
            units=units or UnitConverter(rules.data.unit_aliases),
            validator=ResourceValidator(),
            wanted=wanted,
            finding_concepts=frozenset(
                c for rule in rules.predictors.values() if isinstance(rule, FindingRule) for c in rule.valuesets
            ),
            pattern_concepts=tuple(
                sorted(c for c in wanted if c in terminology.concepts and terminology.concepts[c].text_pattern)
            ),
        )

    @property
    def terminology(self) -> Terminology:
        return self.setup.terminology

    @property
    def rules(self) -> MappingRules:
        return self.setup.rules

    @property
    def validator(self) -> ResourceValidator:
        """The R4 validator, with its memory of resources judged before."""
        return self.setup.validator

    def read(self, resources: Iterable[object], *, patient_id: str, at: datetime) -> Chart:
        """One pass over ``resources``; predictors are then evaluated on demand by :meth:`Chart.findings`."""
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        run = Run(
            setup=self.setup,
            patient_id=patient_id,
            at=at,
            originals=resources if isinstance(resources, PrunedResources) else None,
        )
        collect(run, resources)
        return Chart(run)


class Chart:
    """One patient's resources, read once. Predictors are evaluated when asked for, each at most once, so a
    caller can decide from a few (eligibility) whether the others are needed at all."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._done: dict[str, PredictorFinding] = {}

    def findings(self, predictor_ids: Iterable[str] | None = None) -> PatientFindings:
        """The findings of ``predictor_ids`` (default: every predictor). Predictors not evaluated are absent from
        ``predictors`` (and read as unknown by :meth:`PatientFindings.state`)."""
        run = self._run
        predictors = run.setup.rules.predictors
        wanted = list(predictors) if predictor_ids is None else list(predictor_ids)
        for pid in wanted:
            if pid not in self._done:
                rule = predictors[pid]
                self._done[pid] = KINDS[type(rule)](run, pid, rule)
        complete = len(self._done) == len(predictors)
        unused = SkipReason.SUPERSEDED if complete else SkipReason.NOT_EVALUATED
        reasons = dict(run.reasons)
        for key in run.candidates:
            if key not in run.used:
                reasons.setdefault(key, unused)
        skipped = Counter(reason for key, reason in reasons.items() if key not in run.used)
        birth = parse_fhir_date(run.birth_date_raw)
        at = run.at
        age = completed_years(birth, at.date()) if birth is not None and birth <= at.date() else None
        return PatientFindings(
            patient_id=run.patient_id,
            evaluated_at=at,
            birth_date=birth,
            age_years=age,
            predictors={pid: self._done[pid] for pid in predictors if pid in self._done},
            resources_seen=run.seen,
            resources_used=len(run.used),
            skipped=dict(sorted(skipped.items())),
            malformed=run.malformed,
            patient_found=run.patient_found,
            sex=run.sex,
        )


def extract_findings(
    resources: Iterable[object],
    *,
    patient_id: str,
    at: datetime,
    terminology: Terminology,
    rules: MappingRules,
    answers: AnswerSets | None = None,
    units: UnitConverter | None = None,
) -> PatientFindings:
    """Read ``resources`` (any mix of Patient, Observation, Condition and Bundles of them, as parsed JSON)
    for ``patient_id`` at evaluation time ``at`` (timezone-aware) and return every predictor's finding."""
    reader = Reader(terminology, rules, answers=answers, units=units)
    return reader.read(resources, patient_id=patient_id, at=at).findings()
