"""Peers measured side by side with perdure (bench only; not project dependencies).

Each module measures its peer with its own public API and returns plain dicts;
``compare.py`` runs every peer in a subprocess of its own and prints ratios.
"""
