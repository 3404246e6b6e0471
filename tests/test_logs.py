"""RedactSecrets (backend/logs.py): configured secrets, and what looks like a credential though nobody
configured it (cookies, tokens, JWTs Label Studio may echo), are masked; the words around them stay."""

import pytest

from backend.logs import RedactSecrets

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.s1gn4tur3_abc-DEF"


@pytest.mark.parametrize("text, expected", [
    ('answered 404: {"detail": "Not found.", "set-cookie": "sessionid=k3j9x8q7w6e5; expires=Thu, 17 Dec 2026; '
     'HttpOnly", "x": 1}', 'answered 404: {"detail": "Not found.", "set-cookie": "***", "x": 1}'),
    ("Cookie: a=b; sessionid=xyz", "Cookie: ***"),
    ("sessionid=k3j9x8q7w6e5; csrftoken=AbC123xyz987", "sessionid=***; csrftoken=***"),
    ('{"csrftoken": "AbC123", "access_token": "tok123", "LABEL_STUDIO_API_KEY": "k"}',
     '{"csrftoken": "***", "access_token": "***", "LABEL_STUDIO_API_KEY": "***"}'),
    (f"Authorization: Token e2e0123456789abcdef0123 and Bearer {JWT}", "Authorization: Token *** and Bearer ***"),
    (f'{{"auth": "Token 0f1e2d3c4b5a69788796", "refresh": "{JWT[:60]}', '{"auth": "Token ***", "refresh": "***'),
    ("Basic dXNlcjpwYXNzd29yZA== and Basic auth is off", "Basic *** and Basic auth is off"),
    ("redis://:pa55word@redis:6379/0 and configured-key-123", "redis://:***@redis:6379/0 and ***"),
])
def test_credentials_are_masked_and_their_names_kept(text, expected):
    assert RedactSecrets(["configured-key-123"]).redact(text) == expected


@pytest.mark.parametrize("text", [
    "Label Studio answered 401 to GET /api/projects/4: {\"detail\": \"legacy token authentication has been "
    "disabled for this organization\"}",
    "Invalid token. Token authentication failed",
    "project 4: generate job finished: {'status': 'done', 'max_new_tokens': 128, 'label_studio_calls': 3}",
    "train job: skipped (3 changed annotations < MIN_NEW_ANNOTATIONS; annotation_keys=12)",
])
def test_prose_and_our_own_figures_stay_readable(text):
    assert RedactSecrets([]).redact(text) == text
