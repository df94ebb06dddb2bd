-- Deterministic local data set: the same ids on every run, safe to re-run.
--
-- users:        00000000-0000-4000-8000-<n as 12 hex digits>,  n = 1..10000
-- wallets:      00000000-0000-4000-9000-<4n+k as 12 hex>,       k = 0..(n % 3)
--               (k = 0 is USD, 1 is EUR, 2 is GBP)
-- transactions: 00000000-0000-4000-a000-<3n+j as 12 hex>,       j = 0..2
--
-- So user 1 is 00000000-0000-4000-8000-000000000001 and owns one USD wallet,
-- 00000000-0000-4000-9000-000000000004; user 2 owns 0000...0008 (USD) and
-- 0000...0009 (EUR).

INSERT INTO users (user_id, email, display_name, country, verified, created_at, updated_at, last_active_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
       'user' || n || '@example.com',
       'User ' || n,
       (ARRAY['US', 'GB', 'DE', 'FR', 'CA', 'AU', 'JP', 'BR'])[1 + n % 8],
       n % 5 <> 0,
       timestamptz '2025-01-01 00:00:00+00' + (n || ' minutes')::interval,
       timestamptz '2025-06-01 00:00:00+00' + (n || ' minutes')::interval,
       timestamptz '2026-01-01 00:00:00+00' - ((n * 7919 % 10000) || ' minutes')::interval
FROM generate_series(1, 10000) AS n
ON CONFLICT (user_id) DO NOTHING;

INSERT INTO wallets (wallet_id, user_id, currency, balance_minor, version, created_at, updated_at)
SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(4 * n + k), 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
       (ARRAY['USD', 'EUR', 'GBP'])[1 + k],
       (n * 7919 + k * 104729) % 10000000,
       1,
       timestamptz '2025-01-02 00:00:00+00' + (n || ' minutes')::interval,
       timestamptz '2025-01-02 00:00:00+00' + (n || ' minutes')::interval
FROM generate_series(1, 10000) AS n
CROSS JOIN LATERAL generate_series(0, n % 3) AS k
ON CONFLICT (wallet_id) DO NOTHING;

-- Each user sends three USD payments from their USD wallet to the USD wallets
-- of three other users.
INSERT INTO transactions (transaction_id, sender_wallet_id, receiver_wallet_id, amount_minor, currency,
                          status, payment_method, created_at, updated_at)
SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(3 * n + j), 12, '0'))::uuid,
       ('00000000-0000-4000-9000-' || lpad(to_hex(4 * n), 12, '0'))::uuid,
       ('00000000-0000-4000-9000-' || lpad(to_hex(4 * (1 + (n + 17 * (j + 1) - 1) % 10000)), 12, '0'))::uuid,
       100 + (n * 31 + j * 977) % 50000,
       'USD',
       (ARRAY['completed', 'completed', 'completed', 'processing', 'failed'])[1 + (n + j) % 5],
       'card_ending_' || lpad(((n * 13 + j) % 10000)::text, 4, '0'),
       timestamptz '2025-07-01 00:00:00+00' + ((n * 3 + j) || ' minutes')::interval,
       timestamptz '2025-07-01 00:00:00+00' + ((n * 3 + j) || ' minutes')::interval
FROM generate_series(1, 10000) AS n
CROSS JOIN generate_series(0, 2) AS j
ON CONFLICT (transaction_id) DO NOTHING;
