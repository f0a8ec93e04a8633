"""The ``nxp2-cds`` command (:mod:`.main`; ``db``, ``evidence``, ``kit``, ``mappings`` sub-commands). The top layer:
may import anything below it.
"""
