"""The worker: ``main.py`` (the harness) and ``protocol.py`` (its files and events), copied into each worker's
directory with ``exercises/program.py``; never imported in the worker as a package."""
