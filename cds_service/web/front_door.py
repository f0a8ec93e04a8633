"""What the front door (nginx of ``nxp2-cds serve``) tells the workers about a request, and how a worker reads it.

nginx hands a request whose worker died before answering to another worker once more (see
``server.nginx_config``). The JWT it carries has then been recorded by the dead worker already; the replay check
must know the second hand-over of the same request from a replay. So the front door writes, on every request, a
header only it can write: its secret (random per start, in its configuration and the workers' environment, nowhere
else) and nginx's ``$request_id`` (random per client request, the same on each hand-over). A client's own header of
that name is replaced by nginx, never passed on; without the secret (gunicorn alone) the header means nothing.

No imports from the service: the server module reads this before the metrics directory is set.
"""

from __future__ import annotations

import hmac
import re

FRONT_DOOR_HEADER = "X-Nxp2-Front-Door"
FRONT_DOOR_SECRET_ENV = "NXP2_CDS_SERVER__FRONT_DOOR_SECRET"  # noqa: S105 - the name of a variable, not a secret
"""How ``nxp2-cds serve`` gives its workers the secret (their ``[server] front_door_secret``)."""
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def front_door_attempt(header: str | None, secret: str | None) -> str | None:
    """The front door's id of this request (the same on each worker it is handed to), when ``header`` carries the
    front door's ``secret``; else None (no front door, or a header the front door did not write)."""
    if not secret or not header:
        return None
    given, _, request_id = header.partition(" ")
    if not hmac.compare_digest(given.encode(), secret.encode()) or not _REQUEST_ID.fullmatch(request_id):
        return None
    return request_id
