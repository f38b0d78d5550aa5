"""Compiler output, committed: do not edit; `optforge build` rewrites it from specs/."""
