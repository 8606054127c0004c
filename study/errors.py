"""The user-facing failures of study/: printed by the CLI as one line, without a traceback."""


class StudyError(Exception):
    """A problem the user can fix: a bad study file, an unknown study, a clash on storage."""


class SpecError(StudyError):
    """A study file (or a --set override) is invalid; the message names the key path."""
