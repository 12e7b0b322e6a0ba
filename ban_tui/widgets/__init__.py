"""Widgets of the ban TUI, knowing nothing of the app or its screens: tables of rows (rows.py),
curves (curves.py), gradient diagnostics (diagnostics.py) and the chain form (chain_form.py)."""
