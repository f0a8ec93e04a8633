"""nxp2-cds: a CDS Hooks 2.0 service for anti-NXP2 positive juvenile dermatomyositis.

Importing this package has no side effects; the HTTP application is built by :func:`create_app`.
"""

from __future__ import annotations

__version__ = "0.1.0"
