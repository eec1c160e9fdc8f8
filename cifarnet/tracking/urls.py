"""Store URLs as they may be shown: the password masked, and where a SQLite file lies.

Every URL that reaches a terminal, a log, a report or a tracking store goes through `masked`;
error text that may quote a URL goes through `scrubbed`."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url

MASK = "***"
# user:password@ inside anything that looks like a URL (the fallback for unparsable text)
# (greedy up to the last "@" of the authority: a raw "@" inside a password is masked whole)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^/\s]*@")
# libpq's and the URL query's password keys (PostgreSQL: password, sslpassword; MySQL
# drivers: passwd, pwd); the value of `key=value` in a query string or a libpq conninfo
BARE_MIN = 4  # the shortest password `scrubbed` looks for outside a URL or key=value
SECRET_KEYS = ("password", "sslpassword", "passwd", "pwd")
# `key=value`, also percent-encoded inside a query value (`options=-c%20password%3Dx`)
_KEY_VALUE = re.compile(r"(?P<head>(?<![A-Za-z_])(?:%s)(?:\s*=\s*|%%3D))"
                        r"(?:'[^']*'|\"[^\"]*\"|[^\s&'\"%%]+(?:%%[0-9A-Fa-f]{2}[^\s&'\"%%]*)*)"
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
    if parsed is None or _raw_at_in_password(url):
        return _KEY_VALUE.sub(rf"\g<head>{MASK}", _CREDENTIALS.sub(rf"\g<head>{MASK}@", url))
    if _KEY_VALUE.search(url) and not any(k.lower() in SECRET_KEYS for k in parsed.query):
        return _KEY_VALUE.sub(rf"\g<head>{MASK}", parsed.render_as_string(hide_password=True))
    secret = [k for k in parsed.query if k.lower() in SECRET_KEYS]
    if parsed.password is None and not secret:
        return url
    if secret:
        parsed = parsed.set(query={**parsed.query, **dict.fromkeys(secret, MASK)})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def _raw_at_in_password(url: str) -> bool:
    """Whether the URL's authority holds more than one "@" (a password with a raw "@",
    which SQLAlchemy and libpq split at the first one, taking the rest for the host)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    return rest.split("/", 1)[0].count("@") > 1


def check_userinfo(url: str, key: str) -> None:
    """Refuse a URL whose password holds a raw "@" (UserError naming `key`, the password
    masked): the driver would take part of the password for the host name, and print it."""
    if _raw_at_in_password(url):
        from cifarnet.errors import UserError

        raise UserError(f"{key} {masked(url)}: the password holds a raw '@'; write it "
                        "percent-encoded, as %40")


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


def is_memory_sqlite(url: str) -> bool:
    """Whether `url` is an in-memory SQLite database (`sqlite://`, `sqlite:///:memory:`):
    private to one process and gone when it ends."""
    parsed = _parsed(url)
    return (parsed is not None and parsed.drivername.startswith("sqlite")
            and (parsed.database in (None, "", ":memory:")
                 or (parsed.database or "").startswith("file::memory:")))


def check_not_in_memory(url: str, key: str) -> None:
    """Refuse an in-memory SQLite store (UserError naming `key`): each process, each worker
    of `--workers N` included, got its own empty store, so the workers ran every job
    again, and nothing outlived the process (no resume, no report)."""
    if is_memory_sqlite(url):
        from cifarnet.errors import UserError

        raise UserError(f"{key} {masked(url)}: an in-memory SQLite store is private to one "
                        "process and lost when it ends; give a file (sqlite:///PATH) or a "
                        "server")


def is_postgres(url: str) -> bool:
    parsed = _parsed(url)
    return parsed is not None and parsed.drivername.split("+")[0] in ("postgresql", "postgres")
