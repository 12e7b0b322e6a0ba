"""The torch-free names (engine.catalog) agree with the torch registries they stand for."""
import inspect

from engine import catalog, objectives


def test_objective_names_and_options_agree():
    assert tuple(objectives.OBJECTIVES) == catalog.OBJECTIVES
    for name, f in objectives.OBJECTIVES.items():
        takes = {k for k, p in inspect.signature(f).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert set(catalog.OBJECTIVE_OPTIONS[name]) == takes - {"generator"}, name
