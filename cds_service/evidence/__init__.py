"""The paper's statistics, recomputed from its counts (:mod:`.statistics`, :mod:`.exact_logistic`). May import
``core`` and the shared leaves.
"""
