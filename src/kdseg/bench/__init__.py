"""``kdseg bench``: measured throughput of every stage against same-process references.

See :mod:`kdseg.bench.runner` for the sections and ``docs/performance.md`` for the results.
"""
