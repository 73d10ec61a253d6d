"""Exceptions raised for bad user input (files, flags, config values)."""


class KfsrInputError(ValueError):
    """Bad user input. The message is one line naming the file or field and the problem."""


class NonFiniteError(FloatingPointError):
    """A run produced NaN/Inf; the last good checkpoint is kept."""
