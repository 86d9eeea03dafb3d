"""Domain services: plain async Python over the stores, no HTTP types.

Typed arguments in, domain records out, :mod:`shared.errors` raised.
"""
