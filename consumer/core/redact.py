"""What may be shown of text that can hold a secret: error messages and values the daemon prints or logs.

Secrets of our own settings are `SecretStr` and mask themselves; these helpers cover what reaches us as
plain text from elsewhere (a validation error quoting its input, an exception chained by a library).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import ValidationError

MASK = "***"


def describe_validation_error(err: ValidationError) -> str:
    """Each failing field's location and message, never its value: pydantic's own text quotes every input
    (`input_value=...`), which for a configuration can be a password."""
    parts = []
    for item in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def find_validation_error(exc: BaseException) -> ValidationError | None:
    """The ValidationError behind `exc`, if any: the exception itself, one of its arguments (Feast wraps it
    as `FeastConfigError(err, path)`), or one it was raised from or while handling."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ValidationError):
            return current
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def describe_error(exc: BaseException) -> str:
    """`Type: message` of an exception, with any validation error in it reduced to locations and messages."""
    found = find_validation_error(exc)
    detail = describe_validation_error(found) if found is not None else str(exc)
    return f"{type(exc).__name__}: {detail}"


# Parts of librdkafka property names whose values are secrets: those librdkafka itself treats as sensitive
# (passwords, private keys and their locations, `sasl.oauthbearer.config`), and OAuth client secrets and
# key passphrases. A path masked by mistake costs little; a secret printed once is leaked.
_SECRET_PROPERTY_PARTS = ("password", "passphrase", "secret", "ssl.key", "ssl_key", "private.key",
                          "sasl.oauthbearer.config")


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka property (of `kafka.settings`) holds a secret."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PROPERTY_PARTS)


def redact_url(url: str) -> str:
    """The URL with the password of its userinfo masked (`https://user:***@host/...`), for display.

    Confluent's registry client takes credentials in the URL, and a comma-separated list of URLs.
    """
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not a URL urllib can split (a broken IPv6 host): hide all that could be userinfo.
        scheme, sep, rest = url.rpartition("://")
        return f"{scheme}{sep}{MASK}@{rest.rpartition('@')[2]}" if "@" in rest else url
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def url_passwords(url: str) -> list[str]:
    """The passwords in a (comma-separated) URL's userinfo, as written and decoded."""
    found = []
    for part in url.split(","):
        try:
            netloc = urlsplit(part).netloc
        except ValueError:
            netloc = part.partition("://")[2].partition("/")[0]
        userinfo, at, _ = netloc.rpartition("@")
        if at and ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found += [password, unquote(password)]
    return [p for p in found if p]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret masked: for messages of libraries that were given one."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
