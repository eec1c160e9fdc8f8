"""User-facing errors: the CLI turns each into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a config, a spec, a path): never a traceback."""


class ConfigError(UserError, ValueError):
    """An unknown key, a wrong type or an impossible value; the message names the dotted key."""


class DataError(UserError):
    """A data folder that is missing, empty or malformed."""
