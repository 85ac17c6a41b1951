"""The one exception type for user mistakes (bad scenario, topology or CLI argument)."""


class UserError(Exception):
    """A mistake in user input. The message is one line: ``file: field: what is allowed``.

    The CLI prints it as ``error: <message>`` and exits with status 2, never with a traceback.
    """
