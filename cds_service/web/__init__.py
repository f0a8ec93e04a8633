"""The HTTP edge: a request comes in (:mod:`.middleware`: the request id, the request log and counters), is
authenticated (:mod:`.guard`, :mod:`.auth`, :mod:`.front_door`), its body decoded (:mod:`.decode`), handed to
``fhir`` for the prefetch and to ``core`` for the decision, and answered (:mod:`.api`: discovery, the service,
feedback; cards, OperationOutcomes). :mod:`.ops` holds the probes, ``/metrics`` and ``/openapi.json``;
:mod:`.runtime` what the endpoints share (one :class:`~.runtime.Runtime` per application); :mod:`.app` builds the
application. May import ``fhir``, ``store``, ``kit``, ``evidence``, ``core`` and the shared leaves; never ``server``
or ``cli``.
"""
