"""The user-facing failures of trainables/: one base type, caught once by the CLI."""


class TrainablesError(Exception):
    """A problem the user can fix (bad setting, bad data, missing weights)."""


class ConfigError(TrainablesError):
    """A training setting has a value that cannot work."""


class DatasetError(TrainablesError):
    """A dataset tree is missing, incomplete or holds a bad file; the message names it."""


class WeightsError(TrainablesError):
    """Pretrained weights are missing or do not fit the model."""


def missing_folder(path) -> str:
    """Why `path` is not a usable folder, for a DatasetError: it is a file, or it is not there."""
    from pathlib import Path

    path = Path(path)
    if path.exists():
        return f"{path} is a file, not a folder"
    return f"the folder {path} does not exist"
