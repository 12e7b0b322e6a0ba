"""The torch-free names (engine.catalog) agree with the torch registries they stand for."""
import inspect

from engine import catalog, objectives


def test_objective_names_and_options_agree():
    assert tuple(objectives.OBJECTIVES) == catalog.OBJECTIVES
    for name, f in objectives.OBJECTIVES.items():
        takes = {k for k, p in inspect.signature(f).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert set(catalog.OBJECTIVE_OPTIONS[name]) == takes - {"generator"}, name


def test_model_options_agree_with_the_builders():
    """catalog.MODEL_OPTIONS (what the torch-free validator accepts in model_options) is exactly
    what each family's builder takes: its keyword arguments, or for a builder that passes
    **options on, those of the module it builds; less the sizes the trainer supplies."""
    from engine import models
    from engine.models import lm
    takes_rest = {"lstm": (lm.WordLSTM, ("vocab_size", "layers", "hidden", "tied")),
                  "lstm-tied": (lm.WordLSTM, ("vocab_size", "layers", "hidden", "tied")),
                  "char-cnn-lstm": (lm.CharCNNLSTM, ("vocab", "layers", "hidden"))}
    assert set(catalog.MODEL_OPTIONS) == {f.family for f in catalog.FAMILIES} == set(models.BUILDERS)
    for family, builder in models.BUILDERS.items():
        params = inspect.signature(builder).parameters
        names = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD} - {"num_classes", "in_channels", "vocab"}
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            cls, passed = takes_rest[family]
            names |= set(inspect.signature(cls.__init__).parameters) - {"self"} - set(passed)
        else:
            assert family not in takes_rest
        assert set(catalog.MODEL_OPTIONS[family]) == names, family
        assert len(set(catalog.MODEL_OPTIONS[family])) == len(catalog.MODEL_OPTIONS[family]), family


def test_checked_model_options_reach_the_builder():
    """Options the validator passed build the model (on the meta device: no memory, no time)."""
    import torch
    from engine import models
    from engine.spec import loads
    cfg = loads('[[experiment]]\nname = "a"\nmodel_options = { width = 0.5, dropout = 0.1 }\n')
    g = cfg.experiments["a"].generations[0]
    with torch.device("meta"):
        model = models.build(g.model, 10, 1, **g.model_options)
    assert model.model_name == "cnn-small"
