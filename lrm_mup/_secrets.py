"""Credentials in storage URLs: the one place that knows what a secret in `scheme://user:password@host/db?k=v` is,
and hides it. Everything that prints, logs, raises or writes a storage URL (the sweep's progress lines and manifest,
the CLI, error messages, a database driver's own error text) goes through `mask_url` / `mask_text` first.

The userinfo ends at the LAST `@` before the host (a password may hold `@`, `/` or `:`; a host never holds `@`), so
`postgresql://me:p@ss@host/db` has the password `p@ss`. The user name is kept (it names the account, as
PostgreSQL's own tools print it, and a URL without a password stays usable); the password, and the value of every
query parameter whose name says it is a secret (`SECRET_PARAM`: password, passwd, pwd, sslpassword, sslkey,
passfile, token, secret, api_key, auth, ...), become `***`. An empty user (`postgresql://:PW@host`) is masked the
same way. Masking is idempotent, so masked forms can be compared: two URLs that differ only in their secrets mask to
the same text.

`driver_url` is the same URL as a database driver must read it: a raw `@` in the user or password is
percent-encoded, since SQLAlchemy's parser stops the password at the first `@` and would take the rest of it for the
host (and echo it in its error message)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

MASK = "***"
# a query parameter whose (lower-cased, percent-decoded) name contains one of these carries a secret
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|cred")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


@dataclass(frozen=True)
class _Parts:
    head: str             # "scheme://"
    user: str | None      # None: no userinfo
    password: str | None  # None: no ":" in the userinfo
    host: str             # host[:port][/path]
    query: str | None     # after "?", None without one


def _userinfo_end(rest: str) -> int:
    """Index of the `@` that ends the userinfo in `rest` (the URL after "://"), or -1. The last `@` before the query;
    where a `?` comes before every `@` it is the password's own `?` unless what lies between it and the last `@` looks
    like a query (holds an `=`)."""
    q = rest.find("?")
    at = rest.rfind("@", 0, q if q >= 0 else len(rest))
    if at < 0 and q >= 0:
        last = rest.rfind("@")
        if last > q and "=" not in rest[q:last]:
            at = last
    return at


def _split(url: str) -> _Parts | None:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    at = _userinfo_end(rest)
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    at_query = rest.find("?")
    host, query = (rest, None) if at_query < 0 else (rest[:at_query], rest[at_query + 1:])
    return _Parts(scheme + sep, user, password, host, query)


def _is_secret(key: str) -> bool:
    return bool(SECRET_PARAM.search(unquote_plus(key).lower()))


def _query_items(query: str) -> list[tuple[str, str | None]]:
    items = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        items.append((key, value if eq else None))
    return items


def _join(p: _Parts, user: str | None, password: str | None, query: list[tuple[str, str | None]] | None) -> str:
    auth = "" if user is None else user + ("" if password is None else ":" + password) + "@"
    q = "" if query is None else "?" + "&".join(k if v is None else f"{k}={v}" for k, v in query)
    return p.head + auth + p.host + q


def mask_url(url: str) -> str:
    """`url` with its password and secret query values replaced by `***` (see the module doc); other text unchanged."""
    p = _split(url)
    if p is None:
        return url
    password = MASK if p.password else p.password
    query = None if p.query is None else [(k, MASK if v and _is_secret(k) else v) for k, v in _query_items(p.query)]
    return _join(p, p.user, password, query)


def has_secret(url: str) -> bool:
    """Whether `mask_url` hides anything in `url` (then the masked form cannot be used to connect)."""
    return mask_url(url) != url


def secrets(url: str) -> list[str]:
    """The secret values of `url` in every spelling a message may carry them (as written, percent-decoded, and as
    `driver_url` encodes them), longest first."""
    p = _split(url)
    if p is None:
        return []
    raw = [p.password] if p.password else []
    if p.query is not None:
        raw += [v for k, v in _query_items(p.query) if v and _is_secret(k)]
    forms = {f for v in raw for f in (v, unquote(v), unquote_plus(v), v.replace("@", "%40"))}
    return sorted((f for f in forms if f), key=len, reverse=True)


def mask_text(text: str, *urls: str) -> str:
    """`text` (e.g. a database driver's error message) with the secrets of `urls` masked wherever they appear, and
    every URL written in it masked (`mask_url`)."""
    for url in urls:
        for form in (url, driver_url(url)):
            text = text.replace(form, mask_url(url))
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    for url in urls:
        for secret in secrets(url):
            text = text.replace(secret, MASK)
    return text


def driver_url(url: str) -> str:
    """`url` with a raw `@` in its user or password percent-encoded (`%40`), so that a driver parsing it up to the
    first `@` reads the user, password and host that `mask_url` and the user mean."""
    p = _split(url)
    if p is None or p.user is None:
        return url
    user = p.user.replace("@", "%40")
    password = None if p.password is None else p.password.replace("@", "%40")
    return _join(p, user, password, None if p.query is None else _query_items(p.query))
