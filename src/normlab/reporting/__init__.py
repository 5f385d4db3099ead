"""Reporting: run records, tables averaged over seeds, the papers' claims checked against them,
and plots.
"""
