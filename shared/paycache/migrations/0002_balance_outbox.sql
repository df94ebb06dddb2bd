-- Write-through support for wallet balances.
--
-- balance_outbox: one row per committed balance write, in the same
-- transaction. It is what the cache update and the balance:{wallet_id}
-- message are made from, so a write whose Redis step failed is applied later
-- (next write of the wallet, cache-warmer, the audit-flush sweep). It also
-- holds the write's audit event, so the audit log can be reconciled from the
-- database whatever happened to the Redis buffer.
CREATE TABLE balance_outbox (
    wallet_id          uuid NOT NULL REFERENCES wallets (wallet_id),
    version            bigint NOT NULL,
    balance_minor      bigint NOT NULL CHECK (balance_minor >= 0),
    currency           char(3) NOT NULL,
    committed_at       timestamptz NOT NULL,
    cache_applied_at   timestamptz,
    audit_event_id     uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    audit_event        jsonb NOT NULL,
    audit_recorded_at  timestamptz,
    PRIMARY KEY (wallet_id, version)
);

CREATE INDEX balance_outbox_cache_pending_idx
    ON balance_outbox (wallet_id, version) WHERE cache_applied_at IS NULL;
CREATE INDEX balance_outbox_audit_pending_idx
    ON balance_outbox (committed_at) WHERE audit_recorded_at IS NULL;

-- Idempotency-Key records: the first response to a keyed PUT, replayed to
-- retries with the same key and body. `fingerprint` is the canonical request
-- (amount in minor units, currency, expected version).
CREATE TABLE idempotency_keys (
    wallet_id       uuid NOT NULL REFERENCES wallets (wallet_id),
    idempotency_key text NOT NULL,
    fingerprint     text NOT NULL,
    status          smallint,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet_id, idempotency_key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
