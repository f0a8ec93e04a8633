"""``nxp2-cds serve``: nginx in front of gunicorn, supervised (:mod:`.supervisor`). May import ``web`` and below."""
