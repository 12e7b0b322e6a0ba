"""`experiments.toml`: the config as a package, without torch or textual.

    schema.py   the resolved experiment's dataclasses, `Problem`, `SpecError` (imports nothing here)
    locate.py   `Locator`: line and column of a key path in the TOML text
    checks.py   `Checker`: the validator, every problem in one pass (schema + locate)
    loading.py  `load` / `loads` / `dumps_experiment` (checks + schema)

Imports only go down that list, so there is no cycle. The schema's documentation is in
`engine/spec/schema.py`.
"""
from engine.spec.checks import Checker, did_you_mean
from engine.spec.loading import dumps_experiment, load, loads
from engine.spec.locate import Locator
from engine.spec.schema import (TRAINING_KEYS, Config, Dataset, Experiment, Generation, Host, Optimizer,
                                Problem, Schedule, SpecError, Training)

__all__ = ["TRAINING_KEYS", "Checker", "Config", "Dataset", "Experiment", "Generation", "Host", "Locator",
           "Optimizer", "Problem", "Schedule", "SpecError", "Training", "did_you_mean", "dumps_experiment",
           "load", "loads"]
