"""Screens of the ban TUI: the main screen and its panels (main.py declares them: experiments,
runs, hosts), the run monitor and the comparison of runs. Views of runs take their data from the
app's `runs` reactive (see ban_tui.app); they import widgets, never the other way."""
from textual.binding import Binding

BACK = Binding("escape", "app.pop_screen", "Back")   # a screen pushed over the main one (monitor, comparison)
