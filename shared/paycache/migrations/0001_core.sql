-- Core schema: users (profiles), wallets, transactions, audit log.
-- Money is integer minor units (bigint): never floating point.

CREATE TABLE users (
    user_id        uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    display_name   text NOT NULL,
    country        char(2) NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    verified       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz
);

CREATE INDEX users_last_active_idx ON users (last_active_at DESC NULLS LAST);

CREATE TABLE wallets (
    wallet_id     uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (user_id),
    currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance_minor bigint NOT NULL CHECK (balance_minor >= 0),
    version       bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX wallets_user_idx ON wallets (user_id);

CREATE TABLE transactions (
    transaction_id     uuid PRIMARY KEY,
    sender_wallet_id   uuid NOT NULL REFERENCES wallets (wallet_id),
    receiver_wallet_id uuid NOT NULL REFERENCES wallets (wallet_id),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    currency           char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status             text NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'reversed')),
    payment_method     text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (sender_wallet_id <> receiver_wallet_id)
);

CREATE INDEX transactions_sender_idx ON transactions (sender_wallet_id, created_at DESC);
CREATE INDEX transactions_receiver_idx ON transactions (receiver_wallet_id, created_at DESC);

-- Write-behind target: event_id makes the flush idempotent (insert ... on
-- conflict do nothing), so a flusher that dies after inserting and before
-- acknowledging duplicates nothing when the batch is retried.
CREATE TABLE audit_log (
    event_id    uuid PRIMARY KEY,
    service     text NOT NULL,
    event_type  text NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_service_idx ON audit_log (service, occurred_at);
