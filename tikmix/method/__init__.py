"""The TiKMiX method (Wang et al. 2025, arXiv 2508.17677), apart from the framework it runs on.

* :mod:`tikmix.method.influence` — Group Influence: the benefit of each domain's data for each target set.
* :mod:`tikmix.method.solvers` — Eq. 9-10, TiKMiX-D's constrained solve, TiKMiX-M's candidates and influence law.
* :mod:`tikmix.method.mixers` — ``tikmix_d`` and ``tikmix_m`` as Mixers.

Nothing is imported here: ``tikmix.method.solvers`` stays a numpy/scipy module (no torch) for its users.
"""
