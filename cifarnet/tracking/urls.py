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
# libpq's and the URL query's password keys (PostgreSQL: password, sslpassword; MySQL
# drivers: passwd, pwd); the value of `key=value` in a query string or a libpq conninfo
BARE_MIN = 4  # the shortest password `scrubbed` looks for outside a URL or key=value
SECRET_KEYS = ("password", "sslpassword", "passwd", "pwd")
_KEY_VALUE = re.compile(r"(?P<head>(?<![A-Za-z_])(?:%s)\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&'\"]+)"
                        % "|".join(SECRET_KEYS), re.IGNORECASE)


def _parsed(url: str) -> URL | None:
    try:
        return make_url(url)
    except Exception:  # not a URL SQLAlchemy can parse
        return None


def masked(url: str) -> str:
    """`url` with its password, and any password in its query string (`SECRET_KEYS`),
    replaced by ***, rendered by SQLAlchemy (`URL.render_as_string(hide_password=True)`); a
    URL without either comes back unchanged, and one SQLAlchemy cannot parse has any
    `user:password@` part and `password=` value masked."""
    parsed = _parsed(url)
    if parsed is None:
        return _KEY_VALUE.sub(rf"\g<head>{MASK}", _CREDENTIALS.sub(rf"\g<head>{MASK}@", url))
    secret = [k for k in parsed.query if k.lower() in SECRET_KEYS]
    if parsed.password is None and not secret:
        return url
    if secret:
        parsed = parsed.set(query={**parsed.query, **dict.fromkeys(secret, MASK)})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def scrubbed(text: str, url: str) -> str:
    """`text` (an error message, say) with `url` shown masked, every
    `scheme://user:password@` and `password=value` (a libpq conninfo, a query string) in it
    masked, and `url`'s password masked where it stands as a whole token (not inside a
    longer word or number) if it has at least `BARE_MIN` characters: a shorter one ("a") would
    mask ordinary words of the message, and drivers quote it in the two forms above."""
    text = text.replace(url, masked(url))
    text = _KEY_VALUE.sub(rf"\g<head>{MASK}", _CREDENTIALS.sub(rf"\g<head>{MASK}@", text))
    parsed = _parsed(url)
    password = str(parsed.password) if parsed is not None and parsed.password else ""
    if len(password) >= BARE_MIN:
        token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])")
        text = token.sub(MASK, text)
    return text


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
