"""The assessment extension's typed model is what the cards send and what the documentation says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from cds_service.contracts import EXTENSION_KEY
from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.kit import extension_doc
from tests.synthetic_patients import CASES, Case

ROOT = Path(__file__).resolve().parents[2]
PLAIN = [case for case in CASES if not case.local_codes]
"""The synthetic patients the shipped configuration reads (the others need a site's local codes)."""


def _extensions(engine: Engine, case: Case, language: str) -> list[dict[str, Any]]:
    context = CardContext("5b8c1e9a-6a51-4a5e-9d2e-0c1f2a3b4c5d", case.patient_id, language=language)
    assessment = engine.assess(case.resources, patient_id=case.patient_id, at=case.at)
    return [card["extension"][EXTENSION_KEY] for card in engine.cards(assessment, context)]


def test_the_readme_tables_are_generated_from_the_model() -> None:
    """The README's extension tables are exactly what the model generates (scripts/update-readme-extension)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert extension_doc.readme_section(readme) == extension_doc.markdown()


def test_the_published_schema_is_generated_from_the_model() -> None:
    """docs/assessment-extension.schema.json is exactly the model's JSON Schema."""
    published = (ROOT / "docs" / "assessment-extension.schema.json").read_text(encoding="utf-8")
    assert published == extension_doc.schema_text()


def test_the_readme_example_is_a_valid_extension() -> None:
    """The example in the README's "The assessment extension" passes the model."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The assessment extension", 1)[1]
    example = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert example is not None
    extension_doc.adapter().validate_python(json.loads(example.group(1)))


@pytest.mark.parametrize("language", ["en", "zh-CN"])
@pytest.mark.parametrize("case", PLAIN, ids=[case.name for case in PLAIN])
def test_every_card_of_the_synthetic_patients_matches_the_model(engine: Engine, case: Case, language: str) -> None:
    """Every card's extension, as JSON on the wire, passes the closed model (no key missing, none unknown)."""
    for extension in _extensions(engine, case, language):
        extension_doc.adapter().validate_json(orjson.dumps(extension))


def test_an_extension_with_an_unknown_key_fails_the_model(engine: Engine) -> None:
    """The model is closed: a key it does not define is refused (so the check above can fail)."""
    case = next(c for c in PLAIN if _extensions(engine, c, "en"))
    extension = {**_extensions(engine, case, "en")[0], "surprise": 1}
    with pytest.raises(ValidationError):
        extension_doc.adapter().validate_json(orjson.dumps(extension))


def test_an_unknown_basis_fails_the_model(engine: Engine) -> None:
    """A basis outside the Basis vocabulary is refused: the vocabularies are closed."""
    case = next(c for c in PLAIN if _extensions(engine, c, "en"))
    extension = _extensions(engine, case, "en")[0]
    extension["predictors"][0] = {**extension["predictors"][0], "basis": "hunch"}
    with pytest.raises(ValidationError):
        extension_doc.adapter().validate_json(orjson.dumps(extension))
