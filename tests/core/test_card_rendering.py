"""Cards a clinician reads in ten seconds, in English and Simplified Chinese: every example patient's cards rendered
to HTML as CommonMark/GFM (markdown-it-py), within the length budget, footnotes on lines of their own, the
eligibility basis shown, no English left on a zh-CN card, the evidence numbers identical in both languages, and
the language chosen by the site or the request."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from babel.messages.pofile import read_po
from markdown_it import MarkdownIt

from cds_service.core.cards import SUMMARY_MAX, CardContext
from cds_service.core.i18n import available_languages, locale_dir, missing_placeholders, translate_knowledge
from cds_service.core.knowledge import KnowledgeBase
from cds_service.core.risk import Assessment
from cds_service.kit.examples import as_of_now, example_bundle, example_index, resolve_references
from tests.builders import AT, PID, condition, obs, patient, qty
from tests.engines import shared_engine
from tests.http_support import AppFactory, Hook
from tests.synthetic_patients import edema_chart, nxp2_positive

DETAIL_BUDGET = 1_300
"""The issue asks for "about 1,200 characters" of markdown; no example may exceed 1,300."""
LANGUAGES = ("en", "zh-CN")
EXAMPLES = example_index()["patients"]
MARKDOWN = MarkdownIt("commonmark").enable("table")
_SUPERSCRIPT = re.compile(r"^[¹²³⁴⁵⁶⁷⁸⁹]")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z]+")
# Words that may stay Latin on a zh-CN card: codes, units, antibody and test names, statistics, FHIR types.
_ALLOWED_LATIN = frozenset(
    {
        "NXP", "MJ", "JDM", "ANA", "BMI", "CD", "ILD", "Ro", "TRIM", "OR", "CI", "WHO", "MRC", "HRCT", "LOINC",
        "ng", "mL", "kg", "pmol", "ug", "mg", "dL", "L", "h", "U", "IU", "m", "cm",
        "P", "z", "n", "vs",
        "Observation", "Condition", "Patient", "wang", "anti", "nxp", "jdm", "evidence", "lang", "zh",
    }
)  # fmt: skip


def _example(example: dict[str, Any]) -> tuple[Assessment, str]:
    bundle = as_of_now(example_bundle(str(example["file"])), datetime.now(UTC).date())
    resources = [e["resource"] for e in resolve_references(bundle)["entry"]]
    patient_id = str(example["patient"])
    return shared_engine().assess(resources, patient_id=patient_id, at=datetime.now(UTC)), patient_id


def _cards(example: dict[str, Any], language: str) -> list[dict[str, Any]]:
    assessment, patient_id = _example(example)
    context = CardContext(
        hook_instance="9d3c1c8e-5b4f-4c1e-9a57-3f0b8d7c6a21",
        patient_id=patient_id,
        evidence_url="https://cds.example.org/evidence",
        language=language,
    )
    return shared_engine().cards(assessment, context)


CASES = [(e, lang) for e in EXAMPLES for lang in LANGUAGES]
IDS = [f"{e['patient']}-{lang}" for e, lang in CASES]


@pytest.mark.parametrize(("example", "language"), CASES, ids=IDS)
def test_summaries_fit_the_cds_hooks_limit(example: dict[str, Any], language: str) -> None:
    """Every summary is under 140 characters."""
    assert all(len(card["summary"]) <= SUMMARY_MAX for card in _cards(example, language))


@pytest.mark.parametrize(("example", "language"), CASES, ids=IDS)
def test_details_fit_the_length_budget(example: dict[str, Any], language: str) -> None:
    """Every detail is about 1,200 characters of markdown at most (1,300 allowed)."""
    lengths = [len(card["detail"]) for card in _cards(example, language)]
    assert all(length <= DETAIL_BUDGET for length in lengths), lengths


@pytest.mark.parametrize(("example", "language"), CASES, ids=IDS)
def test_footnotes_render_as_separate_paragraphs(example: dict[str, Any], language: str) -> None:
    """Each footnote is its own paragraph in the rendered HTML, never run together with the next one."""
    for card in _cards(example, language):
        markers = [line for line in card["detail"].split("\n") if _SUPERSCRIPT.match(line)]
        html = MARKDOWN.render(card["detail"])
        paragraphs = re.findall(r"<p>([¹²³⁴⁵⁶⁷⁸⁹][^<]*)</p>", html)
        assert len(paragraphs) == len(markers)


@pytest.mark.parametrize(("example", "language"), CASES, ids=IDS)
def test_risk_tables_render_as_html_tables(example: dict[str, Any], language: str) -> None:
    """A risk card's predictor table renders as one HTML table with a row per tier-driving predictor."""
    for card in _cards(example, language):
        extension = card["extension"]["nxp2-cds.assessment"]
        if extension["cardType"] != "risk":
            continue
        html = MARKDOWN.render(card["detail"])
        assert html.count("<table>") == 1
        assert html.count("<tr>") == 1 + len(extension["drivers"])


@pytest.mark.parametrize(("example", "language"), CASES, ids=IDS)
def test_risk_cards_state_their_eligibility_basis(example: dict[str, Any], language: str) -> None:
    """A risk card says why it applies: the anti-NXP2 result with its date and source, and the age."""
    heading = shared_engine().knowledge_for(language).wording.basis_heading
    for card in _cards(example, language):
        if card["extension"]["nxp2-cds.assessment"]["cardType"] == "risk":
            basis = next(p for p in card["detail"].split("\n\n") if heading in p)
            assert "Observation/" in basis
            assert "Condition/" in basis


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_zh_cn_cards_have_no_english_words(example: dict[str, Any]) -> None:
    """A zh-CN card holds no English word except codes, units, test names and what the record itself says."""
    assessment, _ = _example(example)
    recorded = " ".join(
        f"{s.value or ''} {s.code_display or ''} {s.reference}"
        for finding in assessment.findings.predictors.values()
        for s in finding.sources
    )
    allowed = _ALLOWED_LATIN | set(_LATIN_WORD.findall(recorded))
    for card in _cards(example, "zh-CN"):
        text = " ".join([card["summary"], card["detail"], *(s["label"] for s in card.get("suggestions", []))])
        text = re.sub(r"\(https?://[^)]*\)|https?://\S+|doi:\S+", " ", text)
        english = sorted({w for w in _LATIN_WORD.findall(text) if w not in allowed})
        assert english == []


def test_evidence_numbers_are_identical_in_every_language() -> None:
    """The 2x2 counts and every published estimate are the same in the Chinese knowledge base as in English."""
    english = shared_engine().knowledge_for("en")
    chinese = shared_engine().knowledge_for("zh-CN")
    for outcome_id, outcome in english.outcomes.items():
        for row, translated in zip(outcome.rows, chinese.outcomes[outcome_id].rows, strict=True):
            assert (row.reference.events, row.reference.n, row.exposed.events, row.exposed.n) == (
                translated.reference.events,
                translated.reference.n,
                translated.exposed.events,
                translated.exposed.n,
            )
            assert (row.published, row.p_two_sided) == (translated.published, translated.p_two_sided)


def test_card_tables_quote_the_same_estimates_in_both_languages() -> None:
    """The ORs and Ps a card's table quotes are the same strings in English and in Chinese."""
    example = EXAMPLES[0]
    number = re.compile(r"\d+\.\d+|<\.\d+|>\d+\.\d+")
    for en, zh in zip(_cards(example, "en"), _cards(example, "zh-CN"), strict=True):
        en_table = [line for line in en["detail"].split("\n") if line.startswith("|")]
        zh_table = [line for line in zh["detail"].split("\n") if line.startswith("|")]
        assert [number.findall(line.rsplit("|", 2)[-2]) for line in en_table[2:]] == [
            number.findall(line.rsplit("|", 2)[-2]) for line in zh_table[2:]
        ]


def test_the_chinese_catalog_is_complete() -> None:
    """Every message of the zh-CN catalog is translated and none is fuzzy."""
    with (locale_dir() / "zh_CN" / "LC_MESSAGES" / "nxp2cds.po").open("rb") as handle:
        catalog = read_po(handle)
    untranslated = [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
    assert untranslated == []


def test_the_catalog_covers_the_knowledge_base() -> None:
    """Every translatable string of the shipped knowledge base has a zh-CN translation (the catalog is current)."""
    english = shared_engine().knowledge_for("en")
    chinese = translate_knowledge(english, "zh-CN")
    assert chinese.wording.service.title != english.wording.service.title
    with (locale_dir() / "zh_CN" / "LC_MESSAGES" / "nxp2cds.po").open("rb") as handle:
        ids = {m.id for m in read_po(handle)}
    from cds_service.core.i18n import knowledge_messages

    missing = [text for _, text in knowledge_messages(english.model_dump(mode="python")) if text not in ids]
    assert missing == []


def test_translations_keep_every_placeholder() -> None:
    """No zh-CN translation drops or adds a {placeholder} of its English message."""
    assert missing_placeholders(shared_engine().knowledge_for("en"), "zh-CN") == []


def test_english_and_simplified_chinese_are_available() -> None:
    """The service offers English and Simplified Chinese."""
    assert available_languages() == ("en", "zh-CN")


def test_cards_say_which_knowledge_base_and_language_produced_them() -> None:
    """The extension names the knowledge base and the language; the detail ends with them in words."""
    card = _cards(EXAMPLES[0], "zh-CN")[0]
    knowledge: KnowledgeBase = shared_engine().knowledge_for("zh-CN")
    assert card["extension"]["nxp2-cds.assessment"]["knowledgeBase"]["language"] == "zh-CN"
    assert card["detail"].rstrip().endswith(f"{knowledge.wording.language_name}_")


def test_suggestions_and_links_carry_the_fields_sdks_require() -> None:
    """Every suggestion says isRecommended and every link autolaunchable (CDS Hooks 2.0) and autoLaunchable (the
    spelling stock HealthChain requires)."""
    for example in EXAMPLES:
        for card in _cards(example, "en"):
            assert all(s["isRecommended"] is False for s in card.get("suggestions", []))
            assert all(link["autolaunchable"] is link["autoLaunchable"] is False for link in card.get("links", []))


def test_chinese_links_open_the_chinese_evidence_page() -> None:
    """A zh-CN card links to the evidence page in Chinese, at its outcome's section."""
    card = _cards(EXAMPLES[0], "zh-CN")[0]
    outcome = card["extension"]["nxp2-cds.assessment"]["outcome"]
    assert card["links"][0]["url"] == f"https://cds.example.org/evidence?lang=zh-CN#{outcome}"


def _bmi_chart(**patient_fields: Any) -> list[dict[str, Any]]:
    return [
        patient(birth="2022-11-01", **patient_fields),
        nxp2_positive(),
        condition("M33.00"),
        obs("39156-5", when="2026-11-20", **qty(13.0, "kg/m2")),
    ]


def _gi_detail(resources: list[dict[str, Any]], language: str = "en") -> str:
    engine = shared_engine()
    cards = engine.cards(engine.assess(resources, patient_id=PID, at=AT), CardContext("h", PID, language=language))
    card = next(c for c in cards if c["extension"]["nxp2-cds.assessment"]["outcome"] == "gi_perforation_death")
    return str(card["detail"])


def test_bmi_card_shows_bmi_for_age_beside_the_cut_off() -> None:
    """A 4-year-old girl with BMI 13.0 gets the WHO BMI-for-age z-score and centile as context on the GI card."""
    detail = _gi_detail(_bmi_chart(gender="female"))
    assert re.search(r"BMI for age \(WHO 2006, 0-5 y\): z −\d\.\d, centile (?:<1|\d+); context only", detail)


def test_bmi_for_age_is_left_out_without_sex_and_says_so() -> None:
    """Without a recorded sex the BMI-for-age context is left out, and the card says why."""
    assert "BMI for age: not computed (sex not recorded)." in _gi_detail(_bmi_chart())


def test_request_language_comes_from_accept_language(make_app: AppFactory) -> None:
    """A request whose Accept-Language asks for zh-CN gets Chinese cards; one that asks for French gets the site's
    default (English)."""
    hook = Hook(make_app())
    chinese = hook.call(*edema_chart(), headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    french = hook.call(*edema_chart(), headers={"Accept-Language": "fr-FR"})
    languages = [
        {c["extension"]["nxp2-cds.assessment"]["knowledgeBase"]["language"] for c in r.get_json()["cards"]}
        for r in (chinese, french)
    ]
    assert languages == [{"zh-CN"}, {"en"}]


def test_site_default_language_is_configurable(make_app: AppFactory) -> None:
    """With [cards] language = "zh-CN" a request without Accept-Language gets Chinese cards and discovery."""
    client = make_app(cards={"language": "zh-CN"}).test_client()
    cards = Hook(client).cards(*edema_chart())
    title = client.get("/cds-services").get_json()["services"][0]["title"]
    chinese = shared_engine().knowledge_for("zh-CN").wording.service.title
    assert ({c["extension"]["nxp2-cds.assessment"]["knowledgeBase"]["language"] for c in cards}, title) == (
        {"zh-CN"},
        chinese,
    )


def test_discovery_speaks_the_requested_language(make_app: AppFactory) -> None:
    """Discovery's title and description follow Accept-Language."""
    client = make_app().test_client()
    body = client.get("/cds-services", headers={"Accept-Language": "zh"}).get_json()
    assert body["services"][0]["title"] == shared_engine().knowledge_for("zh-CN").wording.service.title


def test_evidence_page_in_chinese(make_app: AppFactory) -> None:
    """/evidence?lang=zh-CN is the Chinese page (html lang, heading), with the same verification numbers."""
    client = make_app().test_client()
    chinese = client.get("/evidence?lang=zh-CN").get_data(as_text=True)
    english = client.get("/evidence").get_data(as_text=True)
    heading = shared_engine().knowledge_for("zh-CN").wording.evidence_page.heading
    assert ('<html lang="zh-CN">' in chinese, heading in chinese, "115/115" in chinese, "115/115" in english) == (
        True,
        True,
        True,
        True,
    )


@pytest.mark.parametrize("language", LANGUAGES)
def test_cards_from_the_compiled_templates_are_the_cards_made_on_the_spot(language: str) -> None:
    """The engine's card templates (made once at start-up) give, for every synthetic chart, exactly the cards that
    rendering from the knowledge base alone gives."""
    from cds_service.core.cards import render_cards
    from tests.synthetic_patients import CASES

    rendered = 0
    for case in CASES:
        engine = shared_engine(case.local_codes)
        assessment = engine.assess(case.chart, patient_id=case.patient_id, at=case.at)
        context = CardContext(
            hook_instance="h", patient_id=case.patient_id, evidence_url="http://127.0.0.1:8080/evidence",
            language=language,
        )  # fmt: skip
        compiled = engine.cards(assessment, context)
        assert compiled == render_cards(assessment, engine.translated[language], context), case.name
        rendered += len(compiled)
    assert rendered >= 40
