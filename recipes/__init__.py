"""End-to-end jobs of qsep (starter corpus, training recipes). Run modules with ``python -m``."""
