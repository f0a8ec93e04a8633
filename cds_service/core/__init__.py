"""The decision, pure (data in, data out; no I/O, no clock, no settings): the knowledge base (:mod:`.knowledge`),
the engine that runs ``fhir_mappings`` and the risk rules (:mod:`.engine`, :mod:`.risk`), the cards
(:mod:`.cards`), languages (:mod:`.i18n`) and growth references (:mod:`.growth`). May import ``fhir_mappings``
and :mod:`cds_service.contracts`, :mod:`cds_service.resources`; never Flask, SQLAlchemy, requests or settings.
"""
