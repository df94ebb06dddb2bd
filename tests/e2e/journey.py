#!/usr/bin/env python3
"""Sign-in to sign-out through the HTTP routes `cargo lambda watch` serves
(as under `make run`: no API Gateway, so every function verifies the bearer
token itself).

Usage: journey.py <watch port>. The environment is the functions' (e2e.sh
sources e2e.env): `paycache-dev login` creates the session in the same
Redis, and `paycache-dev service-token` mints the ledger's token with the
same development key. Prints one line per step and closes with
'journey: N passed, M failed'; exits non-zero on any failure."""
import os
import sys

import json
import subprocess

from common import ROOT, Steps, dev, request
PORT = sys.argv[1]

# Seed user 2 owns the USD wallet ...0008 (shared/paycache/seed/local.sql);
# user 3 and wallet ...000c are someone else's.
ME = "00000000-0000-4000-8000-000000000002"
OTHER = "00000000-0000-4000-8000-000000000003"
MY_WALLET = "00000000-0000-4000-9000-000000000009"  # user 2's EUR wallet
OTHER_WALLET = "00000000-0000-4000-9000-00000000000c"
LEDGER = "journey-ledger"


def http(method, path, token=None, body=None):
    return request(method, f"http://127.0.0.1:{PORT}{path}", token, body)


step = Steps()


def cognito():
    import boto3
    return boto3.client("cognito-idp", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def signed_in_at_the_pool():
    """User 2 signed in at the (local) user pool: a refresh token that, until
    logout, can mint new tokens (and with them new sessions)."""
    idp, pool = cognito(), os.environ["COGNITO_USER_POOL_ID"]
    client = idp.create_user_pool_client(
        UserPoolId=pool, ClientName="journey",
        ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    password = "Journey-password-1"
    idp.admin_create_user(UserPoolId=pool, Username=ME, MessageAction="SUPPRESS",
                          TemporaryPassword=password)
    idp.admin_set_user_password(UserPoolId=pool, Username=ME, Password=password, Permanent=True)
    auth = idp.admin_initiate_auth(UserPoolId=pool, ClientId=client, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                                   AuthParameters={"USERNAME": ME, "PASSWORD": password})
    return client, auth["AuthenticationResult"]["RefreshToken"]


def refresh_works(client, refresh_token):
    """True when the refresh token mints tokens, False when the pool refuses
    it (NotAuthorizedException); anything else is an error, not a refusal."""
    idp = cognito()
    try:
        idp.admin_initiate_auth(UserPoolId=os.environ["COGNITO_USER_POOL_ID"], ClientId=client,
                                AuthFlow="REFRESH_TOKEN_AUTH",
                                AuthParameters={"REFRESH_TOKEN": refresh_token})
        return True
    except idp.exceptions.NotAuthorizedException:
        return False


def signed_in_through_the_trigger():
    """User 2 signs in as deployed: the user pool runs the Pre Token
    Generation trigger (`session-signin`, the V2 event as Cognito sends it:
    events/session-signin.json), which creates the session and answers with
    the `sid` claim to add; the access token then carries that `sid` (minted
    here with the development key, as Cognito would sign it)."""
    out = subprocess.run(
        ["cargo", "lambda", "invoke", "session-signin", "--invoke-address", "127.0.0.1",
         "--invoke-port", PORT, "--data-file", os.path.join(ROOT, "events/session-signin.json"),
         "--output-format", "json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"session-signin failed: {out.stderr.strip()[-400:]}")
    answer = json.loads(out.stdout)
    sid = answer["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"][
        "claimsToAddOrOverride"]["sid"]
    return sid, dev("token", "--user", "2", "--session-id", sid)


def main():
    sid, token = signed_in_through_the_trigger()
    step("sign in through the Pre Token Generation trigger: a session and its sid", bool(sid), sid)
    other_device = dev("login", "--user", "2")
    this_device_only = dev("login", "--user", "2")
    pool_client, refresh_token = signed_in_at_the_pool()
    ledger = dev("service-token", "--client", LEDGER, "--scope", "wallets.balance.write")

    s, h, b = http("GET", f"/users/{ME}/profile", token)
    step("sign in, read the own profile: 200 with Cache-Status and the user's RateLimit",
         s == 200 and b.get("user_id") == ME and "cache-status" in h
         and h.get("ratelimit", "").startswith('"users.profile.read"'), f"{s} {h} {b}")
    s, _, b = http("GET", f"/users/{OTHER}/profile", token)
    step("another user's profile is 404", s == 404 and b.get("status") == 404, f"{s} {b}")
    s, _, b = http("GET", f"/wallets/{OTHER_WALLET}/balance", token)
    step("another user's wallet is 404", s == 404, f"{s} {b}")
    s, _, b = http("GET", f"/wallets/{MY_WALLET}/balance", token)
    step("the own wallet's balance is 200", s == 200 and b.get("wallet_id") == MY_WALLET
         and "user_id" not in b, f"{s} {b}")
    version = b.get("version") if isinstance(b, dict) else None
    currency = b.get("currency") if isinstance(b, dict) else None
    put = {"balance": "77.00", "currency": currency, "expected_version": version}
    s, _, b = http("PUT", f"/wallets/{MY_WALLET}/balance", token, put)
    step("the user's PUT on the own wallet is 403", s == 403, f"{s} {b}")
    s, _, b = http("PUT", f"/wallets/{MY_WALLET}/balance", ledger, put)
    step("the ledger service's PUT is 200", s == 200 and b.get("version") == (version or 0) + 1,
         f"{s} {b}")
    s, _, b = http("GET", f"/wallets/{MY_WALLET}/balance", token)
    step("the user's next read shows the new version",
         s == 200 and b.get("version") == (version or 0) + 1 and b.get("balance") == "77.00",
         f"{s} {b}")
    # wallets.balance.write: 60 per hour per caller (e2e.env); every
    # attempt counts, a conflicting one too.
    statuses = []
    for _ in range(70):
        s, h, b = http("PUT", f"/wallets/{MY_WALLET}/balance", ledger, put)
        statuses.append(s)
        if s == 429:
            break
    step("the service exceeds wallets.balance.write: 429 with Retry-After",
         statuses[-1] == 429 and h.get("retry-after", "").isdigit()
         and b.get("type") == "urn:paycache:problem:rate-limited", f"{statuses} {h}")
    s, _, b = http("POST", "/sessions/logout", this_device_only)
    step("signing out of one sign-in ends it, not the others",
         s == 200 and b.get("scope") == "session"
         and http("GET", f"/users/{ME}/profile", this_device_only)[0] == 401
         and http("GET", f"/users/{ME}/profile", other_device)[0] == 200, f"{s} {b}")
    step("before signing out everywhere, the user's refresh token mints new tokens",
         refresh_works(pool_client, refresh_token))
    s, _, b = http("POST", "/sessions/logout", token, {"scope": "all"})
    step("the user signs out everywhere", s == 200 and b.get("scope") == "all", f"{s} {b}")
    step("after it, the refresh token is revoked at the user pool (no new session)",
         not refresh_works(pool_client, refresh_token))
    s, _, b = http("GET", f"/users/{ME}/profile", other_device)
    step("another device's sign-in is ended too (401)", s == 401, f"{s} {b}")
    s, h, b = http("GET", f"/users/{ME}/profile", token)
    step("the same token is refused (401, invalid_token)",
         s == 401 and h.get("www-authenticate") == 'Bearer error="invalid_token"', f"{s} {h}")
    s, h, b = http("GET", f"/users/{ME}/profile")
    step("no token is refused (401, Bearer)", s == 401 and h.get("www-authenticate") == "Bearer",
         f"{s} {h}")
    sys.exit(0 if step.summary("journey") else 1)


if __name__ == "__main__":
    main()
