//! Validated identifiers: every id a request or an event carries is parsed
//! into one of these types before it reaches a key or a query — UUIDs in
//! their canonical form (one spelling per entity), tokens in the base64url
//! alphabet, policy and service names in `a-z 0-9 _ . -`. None of these
//! alphabets holds `{`, `}` or `:`, which is what lets `super` (the key
//! layout) promise that no request can choose a key's hash slot.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why an identifier was rejected, in words fit for a 400 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidId {
    /// The field (`user_id`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Uuid);

        impl $name {
            /// The field's name in requests and errors.
            pub const FIELD: &'static str = $field;

            /// Parses the canonical form (lower-case hyphenated UUID).
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                parse_uuid(raw, $field).map(Self)
            }

            /// The UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }

        /// Canonical form: lowercase, hyphenated.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// A user's id: a UUID in canonical hyphenated form, any letter case.
    UserId,
    "user_id"
);
uuid_id!(
    /// A wallet's id: a UUID in canonical hyphenated form, any letter case.
    WalletId,
    "wallet_id"
);
uuid_id!(
    /// A transaction's id: a UUID in canonical hyphenated form, any letter case.
    TransactionId,
    "transaction_id"
);

/// Only the canonical 36-character hyphenated form is accepted (the `uuid`
/// crate alone would also take braces, `urn:uuid:` and the simple form, which
/// would give one wallet several spellings).
fn parse_uuid(raw: &str, field: &'static str) -> Result<Uuid, InvalidId> {
    let bytes = raw.as_bytes();
    let shape_ok = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !shape_ok {
        return Err(InvalidId {
            field,
            problem: "must be a UUID in canonical form (8-4-4-4-12 hexadecimal digits)",
        });
    }
    Uuid::parse_str(raw).map_err(|_| InvalidId {
        field,
        problem: "must be a UUID in canonical form (8-4-4-4-12 hexadecimal digits)",
    })
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:ident, $problem:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The field's name in requests and errors.
            pub const FIELD: &'static str = $field;

            /// Parses and validates the value.
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                if $check(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(InvalidId { field: $field, problem: $problem })
                }
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// `a-z 0-9 _ . -`, 1–64 characters: rate-limit policy names and service names.
fn is_policy_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// The base64url alphabet, 1–128 characters, `=` padding only at the end.
fn is_base64url_token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    (1..=128).contains(&s.len())
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

token_id!(
    /// A rate-limit policy name (the contract's `endpoint`).
    Endpoint,
    "endpoint",
    is_policy_name,
    "must be 1–64 characters of a-z 0-9 _ . -"
);
token_id!(
    /// The service whose audit events a buffer holds.
    ServiceName,
    "service",
    is_policy_name,
    "must be 1–64 characters of a-z 0-9 _ . -"
);
token_id!(
    /// A session id.
    SessionId,
    "session_id",
    is_base64url_token,
    "must be 1–128 characters of A-Z a-z 0-9 _ - with optional trailing = padding"
);
token_id!(
    /// A JWT's `jti` claim.
    Jti,
    "jti",
    is_base64url_token,
    "must be 1–128 characters of A-Z a-z 0-9 _ - with optional trailing = padding"
);
token_id!(
    /// A WebSocket connection id.
    ConnectionId,
    "connection_id",
    is_base64url_token,
    "must be 1–128 characters of A-Z a-z 0-9 _ - with optional trailing = padding"
);
token_id!(
    /// A service principal's OAuth client id (`client_id`).
    ClientId,
    "client_id",
    is_base64url_token,
    "must be 1–128 characters of A-Z a-z 0-9 _ - with optional trailing = padding"
);
token_id!(
    /// A device fingerprint.
    DeviceFingerprint,
    "device_fingerprint",
    is_base64url_token,
    "must be 1–128 characters of A-Z a-z 0-9 _ - with optional trailing = padding"
);
