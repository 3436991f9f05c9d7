"""Solvers for cone programs (SCS)."""
