"""Schema revisions, oldest first. Revision ids are explicit and stable: ``NNNN_name``."""
