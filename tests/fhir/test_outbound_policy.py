"""The outbound policy, called directly (:class:`cds_service.fhir.client.ServerPolicy`, no app, no server): which
fhirServer values pass :meth:`~ServerPolicy.check` (allowlist, https, normalised first, unsafe forms refused) and
which URLs :meth:`~ServerPolicy.admit` lets a call request, redirect to or page through (only under the base path
of the fhirServer the call was allowed for).

Already covered elsewhere, so not repeated here: default ports, host case, IDNA and IPv6 compression against an
exact entry (tests/fhir/test_ssrf.py, ``test_policy_normalises_default_ports_case_idna_and_ipv6``, the one direct test
there); the same rules end to end through the HTTP app, with the metric and the log line (the rest of
tests/fhir/test_ssrf.py); a ``next`` link to another origin through :meth:`FhirClient.next_page`
(tests/kit/test_mappings_survey.py)."""

from __future__ import annotations

import pytest

from cds_service.fhir.client import FhirNotAllowed, ServerPolicy

HOST = "https://fhir.example.org"
EXACT = f"{HOST}/r4"
"""An exact allowlist entry."""
PREFIX = f"{HOST}/fhir/*"
"""A prefix allowlist entry."""
BASE = f"{HOST}/fhir/tenant-a"
"""A fhirServer the prefix entry admits: the base every request of its call must stay under."""


def refused_reason(policy: ServerPolicy, fhir_server: str) -> str:
    with pytest.raises(FhirNotAllowed) as caught:
        policy.check(fhir_server)
    return caught.value.reason


def admit_refusal(url: str, where: str = "request", base: str = BASE) -> FhirNotAllowed:
    with pytest.raises(FhirNotAllowed) as caught:
        ServerPolicy.admit(base, url, where)
    return caught.value


# -- check: the allowlist ------------------------------------------------------------------------------

EQUIVALENT = {
    "a trailing slash": f"{EXACT}/",
    "repeated slashes": f"{HOST}//r4//",
    "dot segments": f"{HOST}/./x/../r4",
    "encoded dots as a segment": f"{HOST}/x/%2e%2E/r4",
    "encoded unreserved letters and digits": f"{HOST}/%72%34",
    "a trailing dot on the host": "https://fhir.example.org./r4",
    "full-width letters in the host (IDNA UTS 46)": "https://\uff46\uff48\uff49\uff52.example.org/r4",
    "surrounding whitespace": f" {EXACT}\n",
}


@pytest.mark.parametrize("written", EQUIVALENT.values(), ids=EQUIVALENT.keys())
def test_an_equivalent_form_of_an_allowlisted_server_is_admitted_as_the_normalised_url(written: str) -> None:
    """A fhirServer naming the exact allowlist entry once normalised (slashes, dot segments, encoded unreserved
    characters, trailing dot, IDNA, whitespace) is admitted, and check returns the normalised URL — what is then
    requested."""
    assert ServerPolicy((EXACT,), allow_http=False).check(written) == EXACT


NOT_ALLOWLISTED = {
    "another host": "https://other.example.org/r4",
    "a host that merely starts like the allowed one": "https://fhir.example.org.evil.example/r4",
    "a Cyrillic look-alike host": "https://fhir.ex\u0430mple.org/r4",
    "another port": "https://fhir.example.org:8443/r4",
    "the path in another case": f"{HOST}/R4",
    "the origin's root": f"{HOST}/",
    "a path below an exact entry": f"{EXACT}/admin",
    "a sibling sharing the entry's letters": f"{HOST}/r4-admin",
    "dot segments leaving the entry": f"{EXACT}/../admin",
    "encoded dots leaving the entry": f"{EXACT}/%2E%2E/admin",
    "half-encoded dots leaving the entry": f"{EXACT}/.%2e/admin",
}


@pytest.mark.parametrize("fhir_server", NOT_ALLOWLISTED.values(), ids=NOT_ALLOWLISTED.keys())
def test_a_server_not_on_the_allowlist_once_normalised_is_refused(fhir_server: str) -> None:
    """An exact entry admits only itself: another host, port or path — including one that reaches another path
    only after dot segments are resolved — is refused as ``not-allowlisted``."""
    assert refused_reason(ServerPolicy((EXACT,), allow_http=False), fhir_server) == "not-allowlisted"


def test_an_empty_allowlist_admits_nothing() -> None:
    """With no ``allowed_servers`` every fhirServer is refused as ``not-allowlisted``."""
    assert refused_reason(ServerPolicy((), allow_http=False), EXACT) == "not-allowlisted"


def test_the_allowlist_entries_are_normalised_too() -> None:
    """An entry written in another form (case, default port, dot segments, repeated and trailing slashes) admits
    the server written normally, and a prefix entry so written admits what is below it."""
    policy = ServerPolicy(
        ("HTTPS://FHIR.Example.org:443//a/../r4/", "https://FHIR.example.org/x/../fhir/*"), allow_http=False
    )
    assert (policy.check(EXACT), policy.check(BASE)) == (EXACT, BASE)


def test_an_entry_that_cannot_be_normalised_admits_nothing_and_spoils_no_other() -> None:
    """An allowlist entry carrying a query (or anything refused in a fhirServer) admits nothing — not even its own
    text — while the other entries still work."""
    policy = ServerPolicy((f"{EXACT}?tenant=a", f"{HOST}\\fhir/*", "https://other.example.org/r4"), allow_http=False)
    assert refused_reason(policy, EXACT) == "not-allowlisted"
    assert refused_reason(policy, BASE) == "not-allowlisted"
    assert policy.check("https://other.example.org/r4") == "https://other.example.org/r4"


# -- check: https --------------------------------------------------------------------------------------


def test_plain_http_is_refused_even_when_allowlisted() -> None:
    """An http entry on the allowlist does not admit its server while ``allow_http`` is false: ``plain-http``."""
    assert (
        refused_reason(ServerPolicy(("http://fhir.example.org/r4",), allow_http=False), "http://fhir.example.org/r4")
        == "plain-http"
    )


def test_plain_http_is_admitted_when_allowed_and_allowlisted() -> None:
    """With ``allow_http`` an allowlisted http server is admitted (test servers)."""
    policy = ServerPolicy(("http://fhir.example.org/r4",), allow_http=True)
    assert policy.check("HTTP://fhir.example.org:80/r4/") == "http://fhir.example.org/r4"


def test_allow_http_does_not_turn_an_https_entry_into_http() -> None:
    """``allow_http`` admits http servers that are on the allowlist as http: an https entry does not admit the same
    host over http (another origin)."""
    assert refused_reason(ServerPolicy((EXACT,), allow_http=True), "http://fhir.example.org/r4") == "not-allowlisted"


# -- check: prefix entries -----------------------------------------------------------------------------

UNDER_PREFIX = {
    "the prefix itself": f"{HOST}/fhir",
    "one segment below": BASE,
    "several segments below": f"{BASE}/r4",
}


@pytest.mark.parametrize("fhir_server", UNDER_PREFIX.values(), ids=UNDER_PREFIX.keys())
def test_a_prefix_entry_admits_its_path_and_below(fhir_server: str) -> None:
    """``https://x/fhir/*`` admits ``https://x/fhir`` and any path below it."""
    assert ServerPolicy((PREFIX,), allow_http=False).check(fhir_server) == fhir_server


OUTSIDE_PREFIX = {
    "a sibling sharing the prefix's letters": f"{HOST}/fhir-admin",
    "dot segments out of the prefix": f"{HOST}/fhir/../admin",
    "encoded dots out of the prefix": f"{HOST}/fhir/%2e%2e/admin",
    "dot segments from below the prefix": f"{BASE}/../../admin",
    "the parent of the prefix": HOST,
}


@pytest.mark.parametrize("fhir_server", OUTSIDE_PREFIX.values(), ids=OUTSIDE_PREFIX.keys())
def test_a_prefix_entry_admits_whole_segments_after_normalisation_only(fhir_server: str) -> None:
    """``https://x/fhir/*`` does not admit what leaves ``/fhir`` once normalised (``https://x/fhir/../admin``), nor
    ``/fhir-admin``: ``not-allowlisted``."""
    assert refused_reason(ServerPolicy((PREFIX,), allow_http=False), fhir_server) == "not-allowlisted"


# -- check: what cannot be normalised safely -----------------------------------------------------------

UNSAFE_FHIR_SERVERS = {
    "a backslash": (f"{HOST}/fhir\\..\\admin", "unsafe-path"),
    "an encoded backslash": (f"{HOST}/fhir/%5c..%5cadmin", "unsafe-path"),
    "an encoded slash": (f"{HOST}/fhir/tenant%2Fa", "unsafe-path"),
    "an encoded slash, lower case": (f"{HOST}/fhir/tenant%2fa", "unsafe-path"),
    "an encoded percent (double encoding)": (f"{HOST}/fhir/%252e%252e/admin", "unsafe-path"),
    "an encoded semicolon": (f"{HOST}/fhir/%3b/admin", "unsafe-path"),
    "a path parameter (..;/)": (f"{HOST}/fhir/..;/admin", "unsafe-path"),
    "a path parameter on a segment": (f"{HOST}/fhir/tenant-a;jsessionid=1", "unsafe-path"),
    "an encoded control character": (f"{HOST}/fhir/tenant-a%00", "unsafe-path"),
    "a malformed percent-encoding": (f"{HOST}/fhir/%zz", "invalid-url"),
    "a lone percent sign": (f"{HOST}/fhir/%", "invalid-url"),
    "user@": ("https://user@fhir.example.org/fhir", "credentials"),
    "user:password@": ("https://user:pw@fhir.example.org/fhir", "credentials"),
    "the allowed host as userinfo": ("https://fhir.example.org@evil.example/fhir", "credentials"),
    "a query": (f"{BASE}?x=1", "query-or-fragment"),
    "an empty query": (f"{BASE}?", "query-or-fragment"),
    "a fragment": (f"{BASE}#/../../admin", "query-or-fragment"),
    "a space inside": (f"{HOST}/fhir/tenant a", "invalid-url"),
    "a tab inside": (f"{HOST}/fhir/\t../admin", "invalid-url"),
    "another scheme": ("ftp://fhir.example.org/fhir", "scheme"),
    "no scheme": ("fhir.example.org/fhir", "scheme"),
    "no host": ("https:///fhir", "unsafe-host"),
    "an encoded host": ("https://%66hir.example.org/fhir", "unsafe-host"),
    "an IPv6 zone identifier": ("https://[fe80::1%25eth0]/fhir", "unsafe-host"),
    "a port out of range": ("https://fhir.example.org:99999/fhir", "invalid-url"),
}


@pytest.mark.parametrize(("fhir_server", "reason"), UNSAFE_FHIR_SERVERS.values(), ids=UNSAFE_FHIR_SERVERS.keys())
def test_a_fhir_server_that_cannot_be_normalised_safely_is_refused_with_its_reason(
    fhir_server: str, reason: str
) -> None:
    """A backslash, credentials, a query or fragment, an encoded ``/``, ``\\``, ``%``, ``;`` or control character,
    a path parameter, a malformed encoding or an unusable scheme, host or port is refused with the rule's reason —
    even though a prefix entry covering the whole origin would admit the normalised path."""
    assert refused_reason(ServerPolicy((f"{HOST}/*",), allow_http=True), fhir_server) == reason


def test_a_refused_fhir_server_is_not_echoed() -> None:
    """The refusal's message says which rule, never the URL (it may name the patient)."""
    with pytest.raises(FhirNotAllowed) as caught:
        ServerPolicy((EXACT,), allow_http=False).check(f"{HOST}/Patient-4711-secret/r4")
    assert "Patient-4711-secret" not in str(caught.value)
    assert "allowlist" in str(caught.value)


# -- admit: under the base path ------------------------------------------------------------------------

ADMITTED = {
    "relative": ("Patient/123", f"{BASE}/Patient/123"),
    "relative with a query": ("Condition?patient=123", f"{BASE}/Condition?patient=123"),
    "an absolute path": ("/fhir/tenant-a/Observation", f"{BASE}/Observation"),
    "absolute, case and default port": ("HTTPS://FHIR.EXAMPLE.ORG:443/fhir/tenant-a/Patient", f"{BASE}/Patient"),
    "the base itself": (BASE, BASE),
    "the base with HAPI's paging query": (
        f"{BASE}?_getpages=abc&_getpagesoffset=20",
        f"{BASE}?_getpages=abc&_getpagesoffset=20",
    ),
    "dot segments that stay under the base": ("Patient/x/../123", f"{BASE}/Patient/123"),
    "repeated slashes": ("Patient//123", f"{BASE}/Patient/123"),
    "encoded unreserved characters": ("Patient/%31%32%7e", f"{BASE}/Patient/12~"),
    "lower-case percent-encoding": ("Patient/%c3%a9", f"{BASE}/Patient/%C3%A9"),
    "a non-ASCII path": ("Patient/\u00e9", f"{BASE}/Patient/%C3%A9"),
    "a fragment (dropped)": ("Patient/123#text", f"{BASE}/Patient/123"),
    "encoded '/' and '|' in the query (left as sent)": (
        "Observation?code=http%3A%2F%2Floinc.org%7C2276-4",
        f"{BASE}/Observation?code=http%3A%2F%2Floinc.org%7C2276-4",
    ),
}


@pytest.mark.parametrize(("url", "admitted"), ADMITTED.values(), ids=ADMITTED.keys())
def test_a_url_under_the_base_is_admitted_normalised(url: str, admitted: str) -> None:
    """A relative or absolute URL under the fhirServer's base path is admitted as its normalised form (resolved
    against the base; case, default port, dot segments, repeated slashes, percent-encoding in the path; fragment
    dropped; the query left as it was)."""
    assert ServerPolicy.admit(BASE, url) == admitted


@pytest.mark.parametrize("url", [admitted for _, admitted in ADMITTED.values()], ids=ADMITTED.keys())
def test_an_admitted_url_admits_itself_unchanged(url: str) -> None:
    """What admit returns passes admit again unchanged: what was checked is exactly what is requested (and a
    redirect to it is checked the same way)."""
    assert ServerPolicy.admit(BASE, url) == url


def test_the_base_is_normalised_before_it_bounds_anything() -> None:
    """The base given to admit is normalised as a fhirServer is: an unnormalised spelling bounds the same path."""
    assert ServerPolicy.admit("HTTPS://FHIR.example.org:443//fhir/./tenant-a/", "Patient/1") == f"{BASE}/Patient/1"


OUTSIDE_BASE = {
    "an absolute path elsewhere": "/admin",
    "absolute, elsewhere on the origin": f"{HOST}/admin",
    "the allowlist prefix (the base's parent)": f"{HOST}/fhir",
    "a sibling under the allowlist prefix": f"{HOST}/fhir/tenant-b/Patient",
    "a sibling through relative dots": "../tenant-b/Patient",
    "a sibling sharing the base's letters": f"{HOST}/fhir/tenant-a-admin",
    "relative dots past the base": "Patient/../../../admin",
    "absolute dots past the base": f"{BASE}/../../admin",
    "encoded dots past the base": "/fhir/tenant-a/%2e%2e/%2E%2E/admin",
    "half-encoded dots past the base": "/fhir/tenant-a/.%2e/%2e./admin",
    "the prefix's dots (https://x/fhir/../admin)": f"{HOST}/fhir/../admin",
}


@pytest.mark.parametrize("url", OUTSIDE_BASE.values(), ids=OUTSIDE_BASE.keys())
def test_a_url_outside_the_base_path_is_refused(url: str) -> None:
    """On the base's origin but outside its path once normalised — elsewhere, a parent, a sibling (even one the
    allowlist prefix would admit), dots past the base, encoded or not — is refused as ``request-outside-base``."""
    assert admit_refusal(url).reason == "request-outside-base"


OTHER_ORIGINS = {
    "another host": "https://evil.example/fhir/tenant-a/Patient",
    "a host that merely starts like the base's": "https://fhir.example.org.evil.example/fhir/tenant-a/Patient",
    "protocol-relative": "//evil.example/fhir/tenant-a/Patient",
    "plain http on the same host": "http://fhir.example.org/fhir/tenant-a/Patient",
    "another port": "https://fhir.example.org:8443/fhir/tenant-a/Patient",
}


@pytest.mark.parametrize("url", OTHER_ORIGINS.values(), ids=OTHER_ORIGINS.keys())
def test_a_url_on_another_origin_is_refused(url: str) -> None:
    """Another scheme, host or port — whatever the path — is refused as ``request-other-origin``."""
    assert admit_refusal(url).reason == "request-other-origin"


UNSAFE_URLS = {
    "a backslash": ("Patient\\..\\..\\admin", "unsafe-path"),
    "an encoded backslash": ("Patient/%5C123", "unsafe-path"),
    "an encoded slash": ("Patient%2F123", "unsafe-path"),
    "an encoded percent": ("Patient/%2525", "unsafe-path"),
    "an encoded semicolon": ("Patient/%3B123", "unsafe-path"),
    "a path parameter (..;/)": (f"{BASE}/..;/admin", "unsafe-path"),
    "a path parameter on a segment": ("Patient;jsessionid=1/123", "unsafe-path"),
    "a malformed percent-encoding": ("Patient/%g1", "invalid-url"),
    "credentials": ("https://user:pw@fhir.example.org/fhir/tenant-a/Patient", "credentials"),
    "a control character": ("Patient/\x00123", "invalid-url"),
    "a space in the query": ("Patient?name=a b", "invalid-url"),
    "another scheme": ("file:///etc/passwd", "scheme"),
}


@pytest.mark.parametrize(("url", "reason"), UNSAFE_URLS.values(), ids=UNSAFE_URLS.keys())
def test_a_url_that_cannot_be_normalised_safely_is_refused(url: str, reason: str) -> None:
    """A request URL with a backslash, credentials, an encoded ``/``, ``\\``, ``%`` or ``;``, a path parameter, a
    malformed encoding, a control character or another scheme is refused with the rule's reason, even where it
    would land under the base."""
    assert admit_refusal(url).reason == reason


@pytest.mark.parametrize(
    "url",
    ["https://[evil.example/fhir/tenant-a/Patient", "//[::1", "https://fhir.example.org\uff0fadmin"],
    ids=["an unclosed IPv6 bracket", "an unclosed IPv6 bracket, protocol-relative", "a full-width solidus in the host"],
)
def test_a_url_urllib_cannot_split_is_refused_not_raised(url: str) -> None:
    """A request, redirect or next link whose host part cannot be parsed at all is refused as ``invalid-url`` (a
    FhirNotAllowed, like any other unsafe URL), not raised as another error."""
    assert admit_refusal(url).reason == "invalid-url"


WHERE = {"request": "a request", "redirect": "a redirect", "next": "a 'next' link"}


@pytest.mark.parametrize(("where", "named"), WHERE.items(), ids=WHERE.keys())
def test_a_refusal_names_where_the_url_came_from(where: str, named: str) -> None:
    """The same rules hold for a request, a redirect and a ``next`` link; the reason (``<where>-outside-base``,
    ``<where>-other-origin``) and the message say which it was and that it was not followed."""
    outside = admit_refusal(f"{HOST}/admin", where)
    elsewhere = admit_refusal("https://evil.example/fhir/tenant-a", where)
    assert (outside.reason, elsewhere.reason) == (f"{where}-outside-base", f"{where}-other-origin")
    assert str(outside) == f"{named} points outside the fhirServer's base path; not followed"
    assert str(elsewhere) == f"{named} points to another origin; not followed"


@pytest.mark.parametrize(
    "url",
    [f"{HOST}/admin/secret-place", "https://evil.example/secret-place", f"{BASE}/secret-place;x"],
    ids=["outside the base", "another origin", "unsafe"],
)
def test_a_refused_url_is_not_echoed(url: str) -> None:
    """A refusal's message names the rule, never the URL (a link may carry the patient's identifiers)."""
    assert "secret-place" not in str(admit_refusal(url))


# -- the allowlist prefix is not the base ---------------------------------------------------------------

BEYOND_THE_CALL = {
    "dot segments out of the prefix (https://x/fhir/../admin)": f"{HOST}/fhir/../admin",
    "another tenant the prefix admits": f"{HOST}/fhir/tenant-b/Patient",
    "the prefix itself": f"{HOST}/fhir/Patient",
}


@pytest.mark.parametrize("url", BEYOND_THE_CALL.values(), ids=BEYOND_THE_CALL.keys())
def test_with_a_prefix_entry_a_call_is_bounded_by_its_fhir_server_not_the_prefix(url: str) -> None:
    """With ``https://x/fhir/*`` allowed and the call allowed for ``https://x/fhir/tenant-a``, a request, redirect
    or next link to another path the prefix covers (or one leaving it) is refused: the bound is the fhirServer the
    call was allowed for, not its origin nor the allowlist prefix."""
    base = ServerPolicy((PREFIX,), allow_http=False).check(BASE)
    for where in ("request", "redirect", "next"):
        assert admit_refusal(url, where, base=base).reason == f"{where}-outside-base"
