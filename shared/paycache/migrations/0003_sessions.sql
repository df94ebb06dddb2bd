-- Sessions and revocations: PostgreSQL is their source of truth, as it is
-- for everything else the cache holds. Redis serves the checks (one
-- round-trip time, no query here on a hit); when Redis cannot answer, or no
-- longer holds a session (evicted), the gate reads these tables instead.
--
-- sessions: one row per sign-in (the Cognito Pre Token Generation trigger,
-- or `paycache-dev login`). `last_seen_at` is when activity was last
-- recorded here: not per request, but at most every
-- SESSION_ACTIVITY_SYNC_SECS (README -> Sessions), so a session counts as
-- live while `last_seen_at` is within the idle timeout plus that interval.
-- `ended_at` is set by a sign-out (of this sign-in, or of every sign-in).
-- `cache_pending` marks an ending Redis has not been told of yet (Redis
-- was down when the user signed out): the minute sweep applies it.
CREATE TABLE sessions (
    session_id    text PRIMARY KEY,
    user_id       uuid NOT NULL,
    email         text NOT NULL,
    roles         text[] NOT NULL,
    permissions   text[] NOT NULL,
    ip_address    text,
    device_info   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    ended_reason  text,
    cache_pending boolean NOT NULL DEFAULT false
);

-- (user_id, session_id): a sign-out of every session finds them by user;
-- a check finds one by both without scanning the user's others.
CREATE INDEX sessions_user_live_idx ON sessions (user_id, session_id) WHERE ended_at IS NULL;
CREATE INDEX sessions_cache_pending_idx ON sessions (ended_at) WHERE cache_pending;

-- revoked_tokens: a token revoked before its expiry (sign-out), kept until
-- no verifier could accept it any more (`expires_at` = its exp + 300 s);
-- the minute sweep deletes the rows past it.
CREATE TABLE revoked_tokens (
    jti           text PRIMARY KEY,
    principal     text NOT NULL,
    reason        text NOT NULL,
    revoked_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    cache_pending boolean NOT NULL DEFAULT false
);

CREATE INDEX revoked_tokens_expiry_idx ON revoked_tokens (expires_at);
CREATE INDEX revoked_tokens_cache_pending_idx ON revoked_tokens (revoked_at) WHERE cache_pending;
