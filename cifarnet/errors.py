"""User-facing errors: the CLI turns each into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a config, a spec, a path): never a traceback."""


class ConfigError(UserError, ValueError):
    """An unknown key, a wrong type or an impossible value; the message names the dotted key."""


class DataError(UserError):
    """A data folder that is missing, empty or malformed."""


SHOW_LIMIT = 80


def shown(value: object, limit: int = SHOW_LIMIT) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with an ellipsis.

    Every user value quoted in a message goes through here, so that one bad input cannot
    turn a one-line error into megabytes. Strings are sliced before `repr`, so a huge string
    is never copied whole; other values are cut after `repr`.
    """
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
        return repr(value)[:limit - 1] + "…"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def clip(text: str, limit: int = SHOW_LIMIT) -> str:
    """`text` as is, or cut to `limit` characters with an ellipsis (for names and paths)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def one_line(message: str, limit: int = 400) -> str:
    """A message as one terminal line: line breaks shown as `\\n`, at most `limit` characters."""
    text = message.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 1] + "…"


class StoreError(UserError):
    """A tracking store or Optuna storage that cannot be opened, or whose lock is
    held too long; the message carries the store's URL with its password masked."""


class DiskFull(UserError):
    """A write met a full disk (ENOSPC) or the file-size limit (EFBIG, `ulimit -f`): the
    command stops, the run in progress is left to resume, and nothing counts as a failure."""

    @classmethod
    def from_error(cls, exc: BaseException, where: str) -> "DiskFull | None":
        """The DiskFull that `exc` (raised while writing under `where`) means, or None. torch
        reports a full disk in `torch.save` as a RuntimeError ("unexpected pos")."""
        import errno
        import shutil

        text = str(exc)
        full = (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG)
                or "No space left on device" in text or "database or disk is full" in text
                or "File too large" in text)
        if not full and "unexpected pos" in text:
            try:
                full = shutil.disk_usage(where).free < 64 * 2**20
            except OSError:
                full = False
        if not full:
            return None
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:,.0f} MB free"
        except OSError:
            free = "free space unknown"
        return cls(f"{where}: the disk is full or a file-size limit was reached ({free}; a run "
                   "needs about 10 MB: its checkpoint and MLflow's copy of it); free space, "
                   "then rerun: the run in progress resumes from its last epoch")
