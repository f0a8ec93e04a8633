"""How FHIR R4 data becomes predictor findings. Pure: no I/O at call time, no HTTP, no cards, no clock.

Public API::

    terminology = load_terminology(local_codes={"anti-nxp2": ["urn:oid:…|MYO-NXP2"]})
    findings = extract_findings(resources, patient_id="123", at=now, terminology=terminology, rules=rules)
    findings.predictors["ferritin_gt_200"].state   # State.PRESENT / ABSENT / UNKNOWN

The codes are in ``valuesets/*.json`` (FHIR R4 ValueSet resources); the thresholds and windows arrive as
:class:`MappingRules`, built from the knowledge base by the caller.
"""

from .extract import Chart, Reader, extract_findings
from .model import Basis, PatientFindings, PredictorFinding, SkipReason, Source, State
from .rules import (
    AntibodyRule,
    BmiRule,
    DataRules,
    FindingRule,
    GradeRule,
    MappingRules,
    PredictorRule,
    QuantityRule,
    RatioRule,
)
from .terminology import Concept, Terminology, TerminologyError, load_terminology
from .units import UnitConverter
from .values import AnswerSets

__all__ = [
    "AnswerSets",
    "AntibodyRule",
    "Basis",
    "BmiRule",
    "Chart",
    "Concept",
    "DataRules",
    "FindingRule",
    "GradeRule",
    "MappingRules",
    "PatientFindings",
    "PredictorFinding",
    "PredictorRule",
    "QuantityRule",
    "RatioRule",
    "Reader",
    "SkipReason",
    "Source",
    "State",
    "Terminology",
    "TerminologyError",
    "UnitConverter",
    "extract_findings",
    "load_terminology",
]
