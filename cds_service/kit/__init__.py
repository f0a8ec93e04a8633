"""The integration kit: example patients and requests (:mod:`.examples`), client tokens (:mod:`.client_tokens`)
and the mappings survey of a site's FHIR server (:mod:`.survey`). May import ``core`` and the shared leaves.
"""
