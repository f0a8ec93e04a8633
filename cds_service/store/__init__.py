"""What the service keeps: feedback, issued-card records and JWT replay checks in the database
(:mod:`.feedback`, migrations in ``migrations/``), and the durable spool of issued-card records (:mod:`.spool`).
May import ``core`` and the shared leaves; not ``web``, ``fhir``, ``kit`` or ``evidence``.
"""
