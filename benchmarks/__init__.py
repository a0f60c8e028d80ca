"""nucflow's benchmark suite: every stage measured against the limits of the machine.

Run ``python benchmarks/run.py --out benchmarks/`` (see ``benchmarks/run.py``); it writes
``results.json`` and ``RESULTS.md``.
"""
