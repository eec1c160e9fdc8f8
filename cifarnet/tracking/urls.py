"""Store URLs as they may be shown: the password masked, and where a SQLite file lies.

Every URL that reaches a terminal, a log, a report or a tracking store goes through `masked`;
error text that may quote a URL goes through `scrubbed`."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url

MASK = "***"
# user:password@ inside anything that looks like a URL (the fallback for unparsable text)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s]*@")


def _parsed(url: str) -> URL | None:
    try:
        return make_url(url)
    except Exception:  # not a URL SQLAlchemy can parse
        return None


def masked(url: str) -> str:
    """`url` with its password replaced by ***, rendered by SQLAlchemy
    (`URL.render_as_string(hide_password=True)`); a URL without a password comes back
    unchanged, and one SQLAlchemy cannot parse has any `user:password@` part masked."""
    parsed = _parsed(url)
    if parsed is None:
        return _CREDENTIALS.sub(rf"\g<head>{MASK}@", url)
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def scrubbed(text: str, url: str) -> str:
    """`text` (an error message, say) with the password of `url`, and any
    `scheme://user:password@`, masked."""
    parsed = _parsed(url)
    password = parsed.password if parsed is not None else None
    if password:
        text = text.replace(url, masked(url)).replace(str(password), MASK)
    return _CREDENTIALS.sub(rf"\g<head>{MASK}@", text)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite://` URL (None for other URLs and in-memory SQLite)."""
    parsed = _parsed(url)
    if parsed is None or not parsed.drivername.startswith("sqlite"):
        return None
    if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def is_postgres(url: str) -> bool:
    parsed = _parsed(url)
    return parsed is not None and parsed.drivername.split("+")[0] in ("postgresql", "postgres")
