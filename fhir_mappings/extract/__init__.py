"""FHIR R4 resources → :class:`PatientFindings`: every predictor present, absent or unknown, with provenance.

The hot path works on plain JSON: one pass over the resources keeps only those for this patient whose code
(or component code, or text) belongs to a value set some predictor uses; everything else is counted and
dropped. Candidates are then read newest first, and only the ones actually read are validated with
fhir.resources (``fhir.resources.R4B``), so the cost of validation grows with the number of predictors, not
with the size of the chart. A resource that fails R4 validation is skipped with a reason, never fatal.

Rules of the domain (see DESIGN.md):

- Observations count with status final / amended / corrected; a preliminary or registered result never counts
  and makes the predictor "pending", not "no result".
- Conditions are read as a clinician reads a problem list: confirmed (or unstated verification) and active /
  recurrence / relapse is present; unconfirmed / provisional / differential is suspected (unknown); refuted,
  inactive, remission, resolved or abated is recorded absent; entered-in-error or no clinical status is no record.
- Resources whose subject is another patient are ignored.
- An antibody is read only from evidence specific to it: its code, its component of a panel, or a result whose
  own name names it. A multi-antibody panel's panel-level value or interpretation never decides it.
- The latest valid value inside a predictor's look-back window wins; results at the same time that disagree are
  resolved towards the predictor being present (the card shows every source), except for rules that say
  ``on_conflict = "unknown"`` (anti-NXP2): results of the same date that disagree are "conflicting", unknown.
- A value outside the rule's plausible range after unit conversion is flagged ("implausible"), never used.
- No valid value in the window is unknown, with the honest reason: no result, pending, equivocal, conflicting,
  unreadable (with the value as written), not paired (with the gap), or older than the look-back. For clinical
  findings, no record either way is unknown ("not recorded"), never absent.

The passes, one module each:

- ``bundles``    — Bundles flattened into ``(resource, fullUrl)``;
- ``screening``  — pass 1: what is there (codes, subject, status, date), every other resource skipped with a reason;
- ``decisions``  — pass 2: look-back windows, and the one rule that turns options into a finding;
- ``readers``    — the value readers (antibody, quantity, grade, ratio, measure, finding Observation);
- ``written``    — a value as written: text, quantities in text, reference ranges, titres;
- ``kinds``      — per kind of rule, the options it gathers (``KINDS``);
- ``run``        — the state they share (:class:`~.run.Run`) and the reader's fixed set-up;
- ``reader``     — the facade: :class:`Reader`, :class:`Chart`, :func:`extract_findings`.
"""

from .reader import Chart, Reader, extract_findings

__all__ = ["Chart", "Reader", "extract_findings"]
