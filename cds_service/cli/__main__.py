"""``python -m cds_service.cli``: the ``nxp2-cds`` command."""

from cds_service.cli.main import main

main()
