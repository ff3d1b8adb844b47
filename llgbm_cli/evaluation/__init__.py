"""Evaluation: delta metrics, result files and plots, acceptance checks (used by `eval` and `ablate`).

Torch is imported inside functions only, so command modules can import names from here cheaply.
"""
