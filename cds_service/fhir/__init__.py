"""Getting the chart: the prefetch templates and their resolution (:mod:`.prefetch`) and the FHIR client with its
outbound policy and deadlines (:mod:`.client`). May import ``core`` and the shared leaves; not ``web``, ``store``,
``kit`` or ``evidence``.
"""
