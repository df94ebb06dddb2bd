//! The stored form of a cache entry, shared by the cache-aside engine and
//! the writers that store entries themselves (the balance write-through):
//! `1:<F|N>:<delta ms>:<expires at ms>:<version>:<JSON>` — `F` a found
//! value, `N` a cached "not found"; `delta` is how long the load took (for
//! early refresh); `version` is what write-through scripts compare.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(super) struct Entry<T> {
    pub(super) value: Option<T>,
    pub(super) delta_ms: u64,
    pub(super) expires_at_ms: u64,
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// Shortens `ttl` by a random 0–`percent` %.
pub fn jittered(ttl: Duration, percent: u8) -> Duration {
    if percent == 0 {
        return ttl;
    }
    let max_cut = ttl.as_millis() as u64 * u64::from(percent) / 100;
    ttl - Duration::from_millis(fastrand::u64(0..=max_cut))
}

/// Encodes an entry (the format above).
pub fn encode<T: Serialize>(
    value: Option<&T>,
    version: u64,
    took: Duration,
    ttl: Duration,
) -> Option<Vec<u8>> {
    let expires = now_ms().saturating_add(millis(ttl));
    let delta = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    let mut out = match value {
        Some(_) => format!("1:F:{delta}:{expires}:{version}:").into_bytes(),
        None => format!("1:N:{delta}:{expires}:0:").into_bytes(),
    };
    if let Some(v) = value {
        serde_json::to_writer(&mut out, v).ok()?;
    }
    Some(out)
}

pub(super) fn decode<T: DeserializeOwned>(raw: &[u8]) -> Option<Entry<T>> {
    let mut parts = raw.splitn(6, |b| *b == b':');
    let format = parts.next()?;
    let kind = parts.next()?;
    let delta_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let expires_at_ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let _version: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let body = parts.next()?;
    if format != b"1" {
        return None;
    }
    let value = match kind {
        b"F" => Some(serde_json::from_slice(body).ok()?),
        b"N" => None,
        _ => return None,
    };
    Some(Entry {
        value,
        delta_ms,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_values_and_not_found() {
        let raw = encode(
            Some(&serde_json::json!({"a": 1})),
            9,
            Duration::from_millis(7),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(raw.starts_with(b"1:F:7:"));
        assert!(std::str::from_utf8(&raw).unwrap().ends_with(":9:{\"a\":1}"));
        let e: Entry<serde_json::Value> = decode(&raw).unwrap();
        assert_eq!(e.value, Some(serde_json::json!({"a": 1})));
        assert_eq!(e.delta_ms, 7);
        assert!(e.expires_at_ms > now_ms());

        let raw =
            encode::<serde_json::Value>(None, 0, Duration::ZERO, Duration::from_secs(1)).unwrap();
        let e: Entry<serde_json::Value> = decode(&raw).unwrap();
        assert_eq!(e.value, None);
    }

    #[test]
    fn garbage_is_not_decoded() {
        for raw in [
            &b""[..],
            b"1:F",
            b"2:F:1:1:0:{}",
            b"1:X:1:1:0:{}",
            b"1:F:x:1:0:{}",
            b"1:F:1:1:x:{}",
            b"1:F:1:1:0:{",
            b"1:F:1:1:{}",
            b"{\"a\":1}",
        ] {
            assert!(decode::<serde_json::Value>(raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn jitter_only_shortens_within_bounds() {
        let ttl = Duration::from_secs(100);
        for _ in 0..1000 {
            let j = jittered(ttl, 10);
            assert!(j <= ttl && j >= Duration::from_secs(90), "{j:?}");
        }
        assert_eq!(jittered(ttl, 0), ttl);
    }
}
