"""Widgets of the ban TUI: tables of rows, curves, diagnostics, the run header, the chain form."""
