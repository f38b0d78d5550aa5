"""Backends: print an `ir.Kernel` as source for one target."""
