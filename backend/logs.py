"""Logging set up once per process, with every configured secret masked out of every record."""

from __future__ import annotations

import logging
import re

# Credentials that can appear in URLs, headers or the bodies Label Studio answers with, even when they are
# not ours to know in advance (the project creator's token from /setup; a session cookie or a token that
# Label Studio echoes in an error body). Each pattern keeps the name or scheme and masks the value.
_VALUE = r"[^\s'\",;}&]+"
_CREDENTIAL_NAME = r"[\w.-]*(?:session|csrf|xsrf|token(?!s)|secret|passw|api_?key|jwt)[\w.-]*"
_PATTERNS = [
    # Authorization: Token|Bearer|Basic <credential>
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:token|bearer|basic)\s+)[^\s'\",}]+"),
    # Set-Cookie / Cookie values, whole (sessionid=...; expires=...; csrftoken=...)
    re.compile(r"(?i)(\b(?:set-)?cookie['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
    # sessionid=, csrftoken=, access_token: "...", api_key=, password=, ... (a name that says credential)
    re.compile(rf"(?i)((?<![\w.-]){_CREDENTIAL_NAME}['\"]?\s*[:=]\s*['\"]?){_VALUE}"),
    re.compile(r"(://[^:/@\s]*:)[^@/\s]+(@)"),  # user:password@host (also :password@host)
]
# "Bearer <token>", "Token <token>" outside a header: masked when the word after it looks like a credential,
# so that prose ("legacy token authentication has been disabled") stays readable.
_SCHEME_VALUE = re.compile(r"(?i)\b((?:bearer|token|basic|jwt)\s+)([\w.~+/=-]{12,})")
_JWT = re.compile(r"\beyJ[\w-]{6,}(?:\.[\w-]*){0,2}")  # a JSON Web Token (Label Studio's personal access tokens)


def _credential_like(word: str) -> bool:
    return (any(c.isdigit() or c in "+/=" for c in word) or any(c.isupper() for c in word[1:])
            or word.startswith("eyJ"))


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _JWT.sub("***", text)
        text = _SCHEME_VALUE.sub(lambda m: m.group(1) + "***" if _credential_like(m.group(2)) else m.group(0), text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex == 2 else ""), text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def setup_logging(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "httpx", "httpcore", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
