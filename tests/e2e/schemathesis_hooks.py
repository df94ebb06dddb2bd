"""schemathesis hooks for scripts/e2e.sh.

`cargo lambda watch` turns each HTTP request into an API Gateway event;
when a header value or a JSON body is not UTF-8 it cannot, and answers 500
itself without invoking any function (no function log line appears). API
Gateway never hands a function such a request as text: binary bodies arrive
base64-encoded (`isBase64Encoded`), which events/balance-put-base64.json and
tests/e2e/hostile.py send, and tests/fuzz.rs feeds the handlers arbitrary
bytes directly.

So that the generated cases still reach the functions, this hook sends
non-ASCII header values as their UTF-8 bytes (HTTP client libraries send
Latin-1) and replaces bytes that are not UTF-8 in a body with U+FFFD: the
function still sees non-ASCII headers and bodies that are not valid JSON,
and must answer them with a 4xx problem document."""
import os

import schemathesis

# Where each answer's status is appended (scripts/e2e.sh counts the ones
# that passed the gate).
STATUS_FILE = os.environ.get("SCHEMATHESIS_STATUS_FILE")


def _as_utf8_wire(value):
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8").decode("latin-1")
    return value


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if case.headers:
        for name in list(case.headers):
            case.headers[name] = _as_utf8_wire(case.headers[name])
    if isinstance(case.body, (bytes, bytearray)):
        case.body = bytes(case.body).decode("utf-8", errors="replace").encode("utf-8")


@schemathesis.hook
def after_call(ctx, case, response):
    if STATUS_FILE:
        with open(STATUS_FILE, "a") as f:
            f.write(f"{response.status_code}\n")
