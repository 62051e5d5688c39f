"""The deployed path end to end (``make bench-e2e``, ``python -m bench.e2e``): see __main__.py."""
