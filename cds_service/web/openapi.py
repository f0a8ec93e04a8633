"""The OpenAPI 3.1 description of the service's own endpoints, served at ``/openapi.json``.

Built once from the :mod:`protocol` models, so the document and the validation cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cds_service.contracts import VERSION
from cds_service.protocol import (
    DiscoveryResponse,
    FeedbackAcknowledgement,
    FeedbackRequest,
    HookRequest,
    OperationOutcome,
    PatientViewContext,
    ServiceResponse,
)

REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _outcome(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/fhir+json": {"schema": {"$ref": REF.format(model="OperationOutcome")}}},
    }


def build(service_id: str, hook: str, auth_required: bool) -> dict[str, Any]:
    schemas = _schemas(
        HookRequest,
        PatientViewContext,
        ServiceResponse,
        DiscoveryResponse,
        FeedbackRequest,
        FeedbackAcknowledgement,
        OperationOutcome,
    )
    # the patient-view request: a HookRequest whose context is a PatientViewContext
    schemas["PatientViewRequest"] = {
        "allOf": [
            {"$ref": REF.format(model="HookRequest")},
            {
                "type": "object",
                "properties": {"hook": {"const": hook}, "context": {"$ref": REF.format(model="PatientViewContext")}},
            },
        ]
    }
    errors = {
        "400": _outcome("The request is not valid."),
        "401": _outcome("The CDS client's JWT is missing or not valid (no detail is given)."),
        "404": _outcome("No such service."),
        "413": _outcome("The body is larger than allowed."),
        "415": _outcome("The body is not JSON."),
    }
    security: list[dict[str, list[str]]] = [{"cdsClientJwt": []}] if auth_required else []
    service_params = [
        {"name": "service_id", "in": "path", "required": True, "schema": {"type": "string", "enum": [service_id]}}
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nxp2-cds",
            "version": VERSION,
            "description": "CDS Hooks 2.0 service for anti-NXP2 positive juvenile dermatomyositis.",
        },
        "paths": {
            "/cds-services": {
                "get": {
                    "summary": "CDS Hooks discovery",
                    "operationId": "discovery",
                    "security": security,
                    "responses": {"200": _json("DiscoveryResponse", "The services."), "401": errors["401"]},
                }
            },
            "/cds-services/{service_id}": {
                "post": {
                    "summary": f"Call the service (hook {hook})",
                    "operationId": "callService",
                    "security": security,
                    "parameters": service_params,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": REF.format(model="PatientViewRequest")}}},
                    },
                    "responses": {
                        "200": _json("ServiceResponse", "Cards (possibly none)."),
                        "412": _outcome("Prefetch data missing and not obtainable; the issues name the keys."),
                        **errors,
                    },
                }
            },
            "/cds-services/{service_id}/feedback": {
                "post": {
                    "summary": "Feedback on cards",
                    "operationId": "feedback",
                    "security": security,
                    "parameters": service_params,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": REF.format(model="FeedbackRequest")}}},
                    },
                    "responses": {"200": _json("FeedbackAcknowledgement", "Stored."), **errors},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "cdsClientJwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "CDS Hooks client JWT (ES384 or RS384; iss, aud, exp, iat, jti).",
                }
            },
        },
    }
