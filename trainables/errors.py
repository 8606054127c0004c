"""The user-facing failures of trainables/: one base type, caught once by the CLI."""


class TrainablesError(Exception):
    """A problem the user can fix (bad setting, bad data, missing weights)."""


class ConfigError(TrainablesError):
    """A training setting has a value that cannot work."""


class DatasetError(TrainablesError):
    """A dataset tree is missing, incomplete or holds a bad file; the message names it."""


class WeightsError(TrainablesError):
    """Pretrained weights are missing or do not fit the model."""
