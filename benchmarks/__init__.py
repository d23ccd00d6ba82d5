"""Benchmarks: a Postfix-like load generator, a null policy server, and the scripts around them.

Not tests: ``make bench`` runs :mod:`benchmarks.run`; :mod:`benchmarks.soak` is the long run.
"""
