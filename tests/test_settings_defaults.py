"""Defaults only in ``config/default.toml``: the settings models declare types and bounds, never a default value
(``None``, "not set", aside: such keys stand in default.toml as commented lines); every other key has its value in
default.toml; a section built in code from some keywords takes the shipped values for the rest.

The layering itself (default.toml < site file < environment < keywords) is tested in test_settings_layering.py."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cds_service.resources import config_path
from cds_service.settings import (
    DatabaseSettings,
    FhirSettings,
    IssuerSettings,
    ServerSettings,
    Settings,
    _Section,
    load_settings,
    shipped_defaults,
)

NOT_IN_DEFAULTS = {
    "auth.issuers[].jku_allowlist": "an issuer is an element of a list, with no table of its own in default.toml; "
    "its empty allowlist is the absence of the key",
}
"""Fields that keep a (non-None) default in Python, and why."""

UNDOCUMENTED = {"server.front_door_secret": "set by `nxp2-cds serve` for its workers, never by hand"}
"""Keys that default to None and are not shown as a commented line in default.toml, and why."""


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def _walk(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``model`` and every model among its fields' types, each with its dotted path (``[]``: an element of a
    list)."""
    yield path, model
    for name, info in model.model_fields.items():
        for inner in _models_in(info.annotation):
            many = typing.get_origin(info.annotation) is not None
            yield from _walk(inner, f"{path}{name}{'[]' if many else ''}.")


MODELS = dict(_walk(Settings))
FIELDS = {f"{path}{name}": info for path, model in MODELS.items() for name, info in model.model_fields.items()}
SECTIONS = {path.rstrip("."): model for path, model in MODELS.items() if path and "[]" not in path}


def test_the_walk_finds_every_section_and_the_issuers() -> None:
    """The models walked are the settings, each of their sections and an issuer (a sanity check of the walk)."""
    tables = ("auth", "fhir", "cors", "server", "database", "mappings", "cards")
    assert set(MODELS) == {"", *(f"{table}." for table in tables), "auth.issuers[]."}
    assert MODELS["auth.issuers[]."] is IssuerSettings


def _declared_default(info: Any) -> Any:
    return PydanticUndefined if info.default is PydanticUndefined and info.default_factory is None else info.default


@pytest.mark.parametrize("dotted", FIELDS, ids=FIELDS)
def test_no_field_declares_a_default_value_in_python(dotted: str) -> None:
    """No field of any settings model has a default in Python other than None ("not set"); no default_factory."""
    info = FIELDS[dotted]
    if dotted in NOT_IN_DEFAULTS:
        assert info.default is not PydanticUndefined  # still an exception: drop it from the list once it is not
        return
    assert info.default_factory is None
    assert info.default in (None, PydanticUndefined)


def _shipped(dotted: str) -> Any:
    table: Any = shipped_defaults()
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return PydanticUndefined
        table = table[part]
    return table


REQUIRED = [dotted for dotted, info in FIELDS.items() if info.default is PydanticUndefined]


@pytest.mark.parametrize("dotted", [d for d in REQUIRED if "[]" not in d], ids=[d for d in REQUIRED if "[]" not in d])
def test_every_key_without_a_none_default_has_its_value_in_default_toml(dotted: str) -> None:
    """Each field that is not "not set" by default has a value in config/default.toml, and the settings loaded
    from nothing else carry it (TOML arrays as tuples)."""
    shipped = _shipped(dotted)
    assert shipped is not PydanticUndefined, f"{dotted} has no value in config/default.toml"
    loaded: Any = load_settings()
    for part in dotted.split("."):
        loaded = getattr(loaded, part)
    if isinstance(loaded, BaseModel):
        return  # a section: its keys are checked one by one
    assert loaded == (tuple(shipped) if isinstance(shipped, list) else shipped)


def test_an_issuer_has_no_shipped_defaults_and_requires_only_iss() -> None:
    """An issuer is an element of ``[[auth.issuers]]``: none is shipped, only ``iss`` is required, and its other
    keys are "not set" (None) but for the exception named in NOT_IN_DEFAULTS."""
    assert _shipped("auth.issuers") == []
    issuer_fields = {d.removeprefix("auth.issuers[]."): info for d, info in FIELDS.items() if "[]" in d}
    assert [k for k, info in issuer_fields.items() if info.is_required()] == ["iss"]
    assert {f"auth.issuers[].{k}" for k, info in issuer_fields.items() if info.default is not None} - {
        "auth.issuers[].iss"
    } == set(NOT_IN_DEFAULTS)


def _commented_keys() -> dict[str, set[str]]:
    """The keys shown as commented lines (``# key = …``) in config/default.toml, by table ("" at the top)."""
    found: dict[str, set[str]] = {}
    table = ""
    for line in config_path("default.toml").read_text(encoding="utf-8").splitlines():
        header = re.match(r"^\[\[?([\w.]+)\]\]?", line)
        if header:
            table = header.group(1)
        commented = re.match(r"^#\s*(\w+)\s*=", line)
        if commented:
            found.setdefault(table, set()).add(commented.group(1))
    return found


NOT_SET = [d for d, info in FIELDS.items() if info.default is None and "[]" not in d]


@pytest.mark.parametrize("dotted", NOT_SET, ids=NOT_SET)
def test_a_key_that_is_not_set_by_default_is_a_commented_line_in_default_toml(dotted: str) -> None:
    """A key whose default is None ("not set") has no value in config/default.toml (TOML has no null) but stands
    there as a commented example in its table, so that default.toml still lists every key."""
    assert _shipped(dotted) is PydanticUndefined
    if dotted in UNDOCUMENTED:
        return
    table, _, key = dotted.rpartition(".")
    assert key in _commented_keys().get(table, set()), f"no '# {key} = …' line in [{table}] of default.toml"


@pytest.mark.parametrize("table", SECTIONS, ids=SECTIONS)
def test_each_section_names_its_table_in_default_toml(table: str) -> None:
    """The table a section takes its missing keys from is the one it is loaded from."""
    section = SECTIONS[table]
    assert issubclass(section, _Section)
    assert table == section.TABLE
    assert isinstance(shipped_defaults()[table], dict)


def _as_loaded(table: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


@pytest.mark.parametrize("table", SECTIONS, ids=SECTIONS)
def test_a_section_built_from_no_keywords_is_the_shipped_table(table: str) -> None:
    """``FhirSettings()`` (and every other section built with no keywords) holds the shipped values, and is the
    section load_settings gives with no other layer."""
    section: Any = SECTIONS[table]
    built = section()
    assert {k: v for k, v in dict(built).items() if k in shipped_defaults()[table]} == _as_loaded(
        shipped_defaults()[table]
    )
    assert built == getattr(load_settings(), table)


def test_a_section_built_from_some_keywords_gets_the_shipped_values_for_the_rest() -> None:
    """``DatabaseSettings(statement_timeout_seconds=1.25)`` has that value and the shipped others;
    ``ServerSettings(...)`` likewise; the bounds still hold for a keyword."""
    database = DatabaseSettings(statement_timeout_seconds=1.25, spool_dir=None)
    shipped = shipped_defaults()["database"]
    assert database.statement_timeout_seconds == 1.25
    assert database.model_dump(exclude={"statement_timeout_seconds", "spool_dir"}) == _as_loaded(
        {k: v for k, v in shipped.items() if k != "statement_timeout_seconds"}
    )
    server = ServerSettings(header_timeout_seconds=7, keepalive_seconds=9)
    assert (server.header_timeout_seconds, server.keepalive_seconds) == (7, 9)
    assert (server.port, server.body_timeout_seconds, server.workers) == (
        shipped_defaults()["server"]["port"],
        shipped_defaults()["server"]["body_timeout_seconds"],
        None,
    )
    with pytest.raises(ValueError, match="max_pages"):
        FhirSettings(max_pages=0)


def test_a_section_instance_as_a_keyword_override_keeps_the_shipped_values() -> None:
    """``load_settings(fhir=FhirSettings(allow_http=True))`` replaces [fhir] with that instance: the key given and
    the shipped others."""
    fhir = load_settings(fhir=FhirSettings(allow_http=True)).fhir
    assert fhir.allow_http is True
    assert fhir.model_dump(exclude={"allow_http"}) == FhirSettings().model_dump(exclude={"allow_http"})


def test_the_shipped_defaults_are_read_once() -> None:
    """config/default.toml is parsed once for all the sections built in code."""
    assert shipped_defaults() is shipped_defaults()
