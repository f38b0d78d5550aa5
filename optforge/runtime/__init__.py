"""Hand-written run-time base of optforge: what generated classes stand on.

Imports numpy and numba only; sympy and jinja2 belong to the compiler.
"""
