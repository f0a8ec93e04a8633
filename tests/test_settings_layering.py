"""Settings layering, called directly (:func:`cds_service.settings.load_settings`, no app): the shipped
``config/default.toml`` < the site file named by ``NXP2_CDS_CONFIG`` < ``NXP2_CDS_*`` environment variables (nested
keys with ``__``) < keyword overrides; unknown keys and wrong types refused with a :class:`SettingsError` naming the
key; secrets never in the message.

Already covered elsewhere, so not repeated here: the CLI's one-line exit for invalid settings
(tests/cli/test_cli_db.py), the issuer and JWK Set validators (tests/web/test_auth.py)."""

from __future__ import annotations

import os
import tomllib
import traceback
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from cds_service.resources import config_path
from cds_service.settings import CONFIG_ENV, Settings, SettingsError, load_settings

SECRET = "S3cret-pw-7f2a"
"""Stands for a database password or a token: it must never appear in an error message."""


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no site file and no NXP2_CDS_* variable, whatever the calling shell has set."""
    for name in [k for k in os.environ if k.upper().startswith("NXP2_CDS_")]:
        monkeypatch.delenv(name)


# -- helpers -------------------------------------------------------------------------------------------


def site_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """Write ``text`` as the site's TOML file and name it in NXP2_CDS_CONFIG."""
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def refusal(**overrides: Any) -> str:
    """The message of the SettingsError that load_settings raises."""
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def value_at(settings: Settings, dotted: str) -> Any:
    return reduce(getattr, dotted.split("."), settings)


def _toml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def set_in_layer(
    layer: str, dotted: str, value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Give ``dotted`` (``key`` or ``section.key``) the ``value`` in one layer (``site``, ``env`` or ``keyword``);
    returns the keyword overrides to pass to load_settings."""
    *section, key = dotted.split(".")
    if layer == "site":
        header = f"[{section[0]}]\n" if section else ""
        site_file(tmp_path, monkeypatch, f"{header}{key} = {_toml_value(value)}\n")
    elif layer == "env":
        monkeypatch.setenv("NXP2_CDS_" + "__".join([*section, key]).upper(), _toml_value(value))
    elif layer == "keyword":
        return {section[0]: {key: value}} if section else {key: value}
    else:
        raise AssertionError(layer)
    return {}


def given_in(layer: str, given: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Put ``given`` in one layer — ``site``: the site file's text, ``env``: variables, ``keyword``: the overrides —
    and return the keyword overrides to pass to load_settings."""
    if layer == "site":
        site_file(tmp_path, monkeypatch, given)
    elif layer == "env":
        for name, value in given.items():
            monkeypatch.setenv(name, value)
    else:
        return dict(given)
    return {}


# -- the shipped defaults ------------------------------------------------------------------------------


def _leaves(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict) and key != "local_codes":
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


SHIPPED = dict(_leaves(tomllib.loads(config_path("default.toml").read_text(encoding="utf-8"))))


@pytest.mark.parametrize(("dotted", "shipped"), SHIPPED.items(), ids=SHIPPED.keys())
def test_without_other_layers_every_key_is_the_shipped_default(dotted: str, shipped: Any) -> None:
    """With no site file, no environment and no overrides, each key of config/default.toml is what load_settings
    gives (TOML arrays as tuples)."""
    expected = tuple(shipped) if isinstance(shipped, list) else shipped
    assert value_at(load_settings(), dotted) == expected


# -- precedence ----------------------------------------------------------------------------------------

ORDER = ("site", "env", "keyword")
VALUES = {"site": 21, "env": 31, "keyword": 41}
DEFAULTS = {"max_body_bytes": 10_000_000, "fhir.deadline_seconds": 4.0}
PRECEDENCE = {
    "site over default": ("site",),
    "env over default": ("env",),
    "keyword over default": ("keyword",),
    "env over site": ("site", "env"),
    "keyword over site": ("site", "keyword"),
    "keyword over env": ("env", "keyword"),
    "keyword over env and site": ("site", "env", "keyword"),
}


@pytest.mark.parametrize("dotted", DEFAULTS, ids=["top-level key", "nested key"])
@pytest.mark.parametrize("layers", PRECEDENCE.values(), ids=PRECEDENCE.keys())
def test_a_key_given_in_several_layers_takes_the_highest(
    layers: tuple[str, ...], dotted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key set in several layers takes the value of the highest one: default < site file < NXP2_CDS_* < keyword
    override (a nested key reached with ``__`` in the environment and a dict in the overrides)."""
    overrides: dict[str, Any] = {}
    for layer in layers:
        overrides |= set_in_layer(layer, dotted, VALUES[layer], tmp_path, monkeypatch)
    highest = max(layers, key=ORDER.index)
    assert value_at(load_settings(**overrides), dotted) == VALUES[highest] != DEFAULTS[dotted]


# -- sections merge --------------------------------------------------------------------------------------


def test_one_key_of_a_section_in_the_site_file_keeps_the_section_s_other_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site file setting only ``[fhir] max_pages`` changes that key: every other key of [fhir] (and every other
    section) keeps its shipped default."""
    shipped = load_settings().model_dump()
    site_file(tmp_path, monkeypatch, "[fhir]\nmax_pages = 3\n")
    loaded = load_settings().model_dump()
    assert loaded["fhir"] == shipped["fhir"] | {"max_pages": 3}
    assert {k: v for k, v in loaded.items() if k != "fhir"} == {k: v for k, v in shipped.items() if k != "fhir"}


def test_a_nested_environment_variable_keeps_the_site_file_s_other_keys_of_the_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NXP2_CDS_FHIR__ALLOW_HTTP=true`` sets that one key; the site file's other [fhir] keys stay as it set them."""
    site_file(tmp_path, monkeypatch, "[fhir]\nmax_pages = 3\ndeadline_seconds = 9.0\n")
    monkeypatch.setenv("NXP2_CDS_FHIR__ALLOW_HTTP", "true")
    fhir = load_settings().fhir
    assert (fhir.allow_http, fhir.max_pages, fhir.deadline_seconds) == (True, 3, 9.0)


def test_a_keyword_override_of_one_key_keeps_the_lower_layers_keys_of_the_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_settings(fhir={"allow_http": True})`` merges into [fhir]: the site file's and the environment's other
    keys of the section, and its defaults, are kept."""
    site_file(tmp_path, monkeypatch, "[fhir]\ndeadline_seconds = 9.0\n")
    monkeypatch.setenv("NXP2_CDS_FHIR__MAX_PAGES", "5")
    fhir = load_settings(fhir={"allow_http": True}).fhir
    assert (fhir.allow_http, fhir.max_pages, fhir.deadline_seconds, fhir.request_timeout_seconds) == (
        True,
        5,
        9.0,
        2.0,
    )


def test_a_list_in_a_higher_layer_replaces_the_lower_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list (here ``allowed_servers``, given as JSON in the environment) replaces the site file's list; the two
    are not concatenated."""
    site_file(tmp_path, monkeypatch, '[fhir]\nallowed_servers = ["https://a.example/fhir"]\n')
    monkeypatch.setenv("NXP2_CDS_FHIR__ALLOWED_SERVERS", '["https://b.example/fhir", "https://c.example/*"]')
    assert load_settings().fhir.allowed_servers == ("https://b.example/fhir", "https://c.example/*")


def test_an_empty_config_variable_means_no_site_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """``NXP2_CDS_CONFIG=`` (set but empty) reads no site file: the shipped defaults apply."""
    shipped = load_settings()
    monkeypatch.setenv(CONFIG_ENV, "")
    assert load_settings() == shipped


# -- the site file itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "a folder"])
def test_a_config_variable_naming_no_file_is_refused(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NXP2_CDS_CONFIG naming a file that does not exist (or a folder) is a SettingsError naming the variable and
    the path — not silently the defaults."""
    named = tmp_path / "absent.toml" if kind == "missing" else tmp_path
    monkeypatch.setenv(CONFIG_ENV, str(named))
    assert refusal() == f"{CONFIG_ENV}={named}: no such file"


def test_a_site_file_that_is_not_toml_is_a_settings_error_saying_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TOML syntax error in the site file is a SettingsError (not a bare TOMLDecodeError) giving line and
    column."""
    site_file(tmp_path, monkeypatch, "max_body_bytes = 1\n[fhir\nmax_pages = 3\n")
    message = refusal()
    assert message.startswith("invalid configuration:")
    assert "line 2" in message


# -- unknown keys --------------------------------------------------------------------------------------

UNKNOWN = {
    "site file, top level": ("site", "max_body_byte = 1\n", "max_body_byte"),
    "site file, in a section": ("site", "[fhir]\nmax_pagez = 3\n", "fhir.max_pagez"),
    "site file, an unknown section": ("site", "[fhirr]\nmax_pages = 3\n", "fhirr"),
    "site file, a nested table": ("site", "[fhir.limits]\nmax_pages = 3\n", "fhir.limits"),
    "environment, nested": ("env", {"NXP2_CDS_FHIR__MAX_PAGEZ": "3"}, "fhir.max_pagez"),
    "keyword, top level": ("keyword", {"max_body_byte": 1}, "max_body_byte"),
    "keyword, in a section": ("keyword", {"fhir": {"max_pagez": 3}}, "fhir.max_pagez"),
}


@pytest.mark.parametrize(("layer", "given", "named"), UNKNOWN.values(), ids=UNKNOWN.keys())
def test_an_unknown_key_is_refused_naming_it(
    layer: str, given: Any, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown key in the site file, a nested environment variable or the overrides is a SettingsError whose
    message names the key with its section (a typo is never silently ignored)."""
    overrides = given_in(layer, given, tmp_path, monkeypatch)
    assert f"\n{named}: Extra inputs are not permitted" in refusal(**overrides)


def test_every_unknown_key_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two unknown keys in the site file are both named in the one message (one line each), so an operator fixes
    them in one go."""
    site_file(tmp_path, monkeypatch, "bogus = 1\n[fhir]\nmax_pagez = 3\n")
    lines = refusal().splitlines()
    assert lines[0] == "invalid configuration:"
    assert sorted(lines[1:]) == [
        "bogus: Extra inputs are not permitted",
        "fhir.max_pagez: Extra inputs are not permitted",
    ]


# -- wrong types and values ----------------------------------------------------------------------------

WRONG_TYPE_LAYERS = {
    "site file": ("site", '[fhir]\nmax_pages = "many"\n'),
    "environment": ("env", {"NXP2_CDS_FHIR__MAX_PAGES": "many"}),
    "keyword": ("keyword", {"fhir": {"max_pages": "many"}}),
}


@pytest.mark.parametrize(("layer", "given"), WRONG_TYPE_LAYERS.values(), ids=WRONG_TYPE_LAYERS.keys())
def test_a_wrong_type_in_any_layer_is_refused_naming_the_field(
    layer: str, given: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fhir.max_pages = "many"`` — from the site file, the environment or an override — is a SettingsError naming
    ``fhir.max_pages`` and the expected type."""
    overrides = given_in(layer, given, tmp_path, monkeypatch)
    assert "\nfhir.max_pages: Input should be a valid integer" in refusal(**overrides)


WRONG_TYPES = {
    "a string for an integer": ("max_body_bytes = 'lots'", "max_body_bytes: Input should be a valid integer"),
    "a string for a number": (
        "[database]\nstatement_timeout_seconds = 'long'",
        "database.statement_timeout_seconds: Input should be a valid number",
    ),
    "a word for a boolean": ("[fhir]\nallow_http = 'maybe'", "fhir.allow_http: Input should be a valid boolean"),
    "a string for a list": ("[fhir]\nallowed_servers = 'https://a.example/fhir'", "fhir.allowed_servers: Input should"),
    "a value outside a choice": ("log_level = 'LOUD'", "log_level: Input should be 'DEBUG', 'INFO'"),
    "a number for a section": ("fhir = 3", "fhir: Input should be a valid dictionary"),
    "a number for a string": ("database_url = 5", "database_url: Input should be a valid string"),
}


@pytest.mark.parametrize(("toml", "says"), WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_wrong_type_is_refused_naming_the_field(
    toml: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the field's type (integer, number, boolean, list, choice, section, string), a value of another type
    is a SettingsError whose line names the field with its section."""
    site_file(tmp_path, monkeypatch, toml + "\n")
    assert f"\n{says}" in refusal()


def test_a_value_out_of_bounds_is_refused_naming_the_field_and_the_bound() -> None:
    """``fhir.max_pages = 0`` (at least 1) is refused naming the field and the bound."""
    assert refusal(fhir={"max_pages": 0}).endswith("\nfhir.max_pages: Input should be greater than or equal to 1")


def test_a_section_in_the_environment_that_is_not_json_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``NXP2_CDS_FHIR`` holding broken JSON is a SettingsError naming the field ``fhir`` (not a traceback)."""
    monkeypatch.setenv("NXP2_CDS_FHIR", '{"max_pages": ')
    assert 'field "fhir"' in refusal()


# -- secrets -------------------------------------------------------------------------------------------

DATABASE_URL = f"postgresql+psycopg://nxp2:{SECRET}@db.example.org/nxp2"


def test_the_database_password_is_not_in_the_message_about_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site file with a database URL carrying a password and an invalid other key: the message names that key and
    never shows the password."""
    site_file(tmp_path, monkeypatch, f"database_url = {DATABASE_URL!r}\nmax_body_bytes = -1\n")
    message = refusal()
    assert "max_body_bytes" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        (f"database_url = [{DATABASE_URL!r}]", "database_url"),
        (f"[server]\nfront_door_secret = [{SECRET!r}]", "server.front_door_secret"),
    ],
    ids=["database URL in a list", "front door secret in a list"],
)
def test_a_wrongly_typed_secret_is_named_but_not_shown(
    toml: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret given with the wrong type (a list instead of a string) is refused naming its field; the value
    itself is not in the message."""
    site_file(tmp_path, monkeypatch, toml + "\n")
    message = refusal()
    assert f"\n{named}: " in message
    assert SECRET not in message


def test_a_secret_in_broken_environment_json_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """``NXP2_CDS_SERVER`` holding broken JSON with the front door's secret in it: the message names the field and
    not the secret."""
    monkeypatch.setenv("NXP2_CDS_SERVER", f'{{"front_door_secret": "{SECRET}"')
    message = refusal()
    assert 'field "server"' in message
    assert SECRET not in message


def test_a_secret_on_a_line_that_is_not_toml_is_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TOML syntax error on the line holding the database password (an unterminated string) gives line and
    column, never the line's text."""
    site_file(tmp_path, monkeypatch, f'database_url = "{DATABASE_URL}\n')
    message = refusal()
    assert "line 1" in message
    assert SECRET not in message


def test_the_front_door_secret_is_never_shown_by_the_settings() -> None:
    """A valid ``server.front_door_secret`` is held as a SecretStr: neither repr nor str of the settings shows it."""
    settings = load_settings(server={"front_door_secret": SECRET})
    assert settings.server.front_door_secret is not None
    assert settings.server.front_door_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) + str(settings)


def test_a_traceback_of_the_error_does_not_show_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole traceback of a SettingsError (with its chained causes) never shows a wrongly typed database URL's
    password."""
    short = f"postgresql://u:{SECRET}@db/x"  # pydantic elides the middle of a longer input_value
    site_file(tmp_path, monkeypatch, f"database_url = [{short!r}]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_credentials_in_a_refused_jwks_url_are_not_shown() -> None:
    """An issuer's plain-http ``jwks_url`` carrying ``user:password@`` is refused without showing the password."""
    issuer = {"iss": "https://ehr.example.org", "jwks_url": f"http://nxp2:{SECRET}@ehr.example.org/jwks.json"}
    message = refusal(auth={"issuers": [issuer]})
    assert "must use https" in message
    assert SECRET not in message
