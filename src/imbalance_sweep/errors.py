"""The one exception type for bad user input."""


class ConfigError(ValueError):
    """Invalid configuration or input data. The message is one line: the value and the fix.

    The command-line entry points print it without a traceback and exit with status 2.
    """
