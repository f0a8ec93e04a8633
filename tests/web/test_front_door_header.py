"""The front door's header (cds_service/web/front_door.py): a worker reads the request id only from a header that
carries the front door's secret."""

from __future__ import annotations

import pytest

from cds_service.web.front_door import front_door_attempt

SECRET = "c0ffee" * 5 + "00"
REQUEST_ID = "0123456789abcdef" * 2


def test_the_front_doors_header_gives_its_request_id() -> None:
    """``<secret> <32 hex digits>`` gives the request id."""
    assert front_door_attempt(f"{SECRET} {REQUEST_ID}", SECRET) == REQUEST_ID


@pytest.mark.parametrize(
    "header",
    [
        f"{'0' * 32} {REQUEST_ID}",  # another secret
        f"{SECRET}{REQUEST_ID}",  # no separator
        f"{SECRET} {REQUEST_ID[:-1]}",  # a short id
        f"{SECRET} {REQUEST_ID.upper()}",  # not nginx's form
        f"{SECRET} {REQUEST_ID} extra",
        f"{SECRET[:-1]} {REQUEST_ID}",
        "",
        "🙂 🙂",
    ],
)
def test_a_header_the_front_door_did_not_write_gives_nothing(header: str) -> None:
    """Any other value (wrong or partial secret, malformed id, extra text, non-ASCII) gives no request id."""
    assert front_door_attempt(header, SECRET) is None


def test_without_a_secret_the_header_means_nothing() -> None:
    """A worker with no front door (gunicorn alone: no secret) ignores the header, whatever it says."""
    assert (front_door_attempt(f"{SECRET} {REQUEST_ID}", None), front_door_attempt(f" {REQUEST_ID}", "")) == (
        None,
        None,
    )
