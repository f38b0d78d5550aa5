"""Compiler passes: small pure functions, each with its own unit tests."""
