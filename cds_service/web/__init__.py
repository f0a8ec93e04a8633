"""The HTTP edge: a request comes in (:mod:`.api`: routes, the request log), is authenticated (:mod:`.auth`,
:mod:`.front_door`), its body decoded (:mod:`.decode`), handed to ``fhir`` for the prefetch and to ``core`` for the
decision, and answered (cards, OperationOutcomes); :mod:`.app` builds the application. May import ``fhir``,
``store``, ``kit``, ``evidence``, ``core`` and the shared leaves; never ``server`` or ``cli``.
"""
