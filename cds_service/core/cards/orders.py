"""The card's suggestions: a draft ServiceRequest (intent ``proposal``) for each missing test, with the reason in the
card's words; the clinician chooses (``isRecommended`` false, ``selectionBehavior`` any)."""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable
from typing import Any

from cds_service.core.cards.context import CardContext
from cds_service.core.cards.facts import Facts
from fhir_mappings import Basis


def suggest(facts: Facts, context: CardContext, card_uuid: str, predictor_ids: Iterable[str]) -> list[dict[str, Any]]:
    """One suggestion per predictor of ``predictor_ids`` that has an order and no result on its way."""
    offered = []
    for predictor_id in predictor_ids:
        predictor = facts.kb.predictors[predictor_id]
        if not facts.orders(predictor_id) or predictor.order is None:
            continue
        offered.append(
            {
                "label": facts.words.suggestion_label.format(test=predictor.test),
                "uuid": str(uuid.uuid5(uuid.UUID(card_uuid), predictor_id)),
                "isRecommended": False,
                "actions": [
                    {
                        "type": "create",
                        "description": predictor.order.text,
                        "resource": service_request(facts, context, predictor_id),
                    }
                ],
            }
        )
    return offered


def service_request(facts: Facts, context: CardContext, predictor_id: str) -> dict[str, Any]:
    """The draft ServiceRequest for ``predictor_id``'s test: its code, this patient, the user as requester when a
    practitioner, and the reason (the outcomes it drives and why it is missing) as plain text."""
    predictor = facts.kb.predictors[predictor_id]
    order = predictor.order
    assert order is not None
    code: dict[str, Any] = {"text": order.text}
    if order.system and order.code:
        coding: dict[str, str] = {"system": order.system, "code": order.code}
        if order.display:
            coding["display"] = order.display
        code["coding"] = [coding]
    words = facts.words
    outcomes = [facts.kb.outcomes[o].label.lower() for o in facts.kb.outcome_ids_driven_by(predictor_id)]
    lookback = predictor.rule.lookback_days
    finding = facts.finding(predictor_id)
    if finding.basis is Basis.NO_DATA:
        why = words.lookback_text.format(days=lookback) if lookback else words.lookback_unlimited_text
    else:
        why = html.unescape(facts.basis_text(finding, predictor_id).replace("\\", ""))  # plain text
    reason = (
        words.suggestion_reason.format(outcomes=words.outcome_joiner.join(outcomes), why=why)
        if outcomes
        else words.suggestion_reason_eligibility.format(why=why)
    )
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": code,
        "subject": {"reference": f"Patient/{context.patient_id}"},
        "reasonCode": [{"text": reason}],
    }
    if context.user_id and context.user_id.split("/", 1)[0] in (
        "Practitioner",
        "PractitionerRole",
    ):
        resource["requester"] = {"reference": context.user_id}
    if order.note:
        resource["note"] = [{"text": order.note}]
    return resource
