"""Screens of the ban TUI: the main tabs (experiments, runs, and any registered panel), the run
monitor and the comparison of runs."""
