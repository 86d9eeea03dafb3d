"""The one error the command line reports: a message and an exit code.

``CliError`` is raised for every expected failure (a server refusal, a file
that does not verify, an unreachable central); ``central.cli.main`` prints it
as one ``skiff: error: <message>`` line and exits with its code.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "CliError"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """An expected failure, reported as one line without a traceback.

    Attributes:
        message: What went wrong, as the user should read it.
        exit_code: The process exit code (1 for failures, 2 for usage).
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
