"""Errors that describe bad input in one line.

Every error a user can cause (a bad flag, a missing data folder, a corrupt file) is a
``StudyError``; the CLI prints its message on one line and exits with code 2. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StudyError(Exception):
    """Bad input that the user can fix; the message is one line and names the problem."""


class ConfigError(StudyError, ValueError):
    """An invalid configuration value, experiment file or search space."""


class DataError(StudyError):
    """A dataset that is missing, unreadable or corrupt."""
