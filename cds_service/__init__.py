"""nxp2-cds: a CDS Hooks 2.0 service for anti-NXP2 positive juvenile dermatomyositis.

The pipeline, one folder per stage (docs/architecture.md): ``web`` (the HTTP edge: request, authentication,
response), ``fhir`` (prefetch and the FHIR client), ``core`` (knowledge base, risk, cards: pure), ``store``
(feedback, issued cards, replay checks), ``evidence`` (the paper's statistics), ``kit`` (integration kit),
``telemetry`` (logs, metrics), ``server`` (``nxp2-cds serve``), ``cli`` (``nxp2-cds``). The application is built by
:func:`cds_service.web.app.create_app`. Importing this package has no side effects.
"""
