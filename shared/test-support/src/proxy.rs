//! A TCP proxy in front of Redis that proves requests were sent together
//! (one round-trip time): it holds the first reply until the expected
//! commands arrived, and counts them.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A TCP proxy in front of a Redis server that proves requests were sent
/// together: once armed, it holds the server's first reply until the
/// client has sent `expected` commands (or `patience` has passed), and
/// records how many commands the client had sent by then. A client that
/// waits for each reply before sending the next command can only have sent
/// one — whatever the timing — so "sent together" is a count, not a clock.
pub struct HoldingProxy {
    /// The first proxy's port (the only one of [`HoldingProxy::start`]).
    pub port: u16,
    /// One port per upstream, in the order given.
    pub ports: Vec<u16>,
    state: std::sync::Arc<(std::sync::Mutex<HoldState>, std::sync::Condvar)>,
}

#[derive(Default)]
pub(super) struct HoldState {
    armed: Option<(usize, Duration)>,
    sent: usize,
    seen_before_reply: Option<usize>,
    /// The start of the reply that was held (for a failure's message).
    held: String,
}

impl HoldingProxy {
    pub fn start(upstream: u16) -> Self {
        Self::start_many(&[upstream])
    }

    /// A proxy in front of each of `upstreams` (a cluster's nodes), all
    /// sharing one hold: the first reply from any of them waits until the
    /// armed number of commands has arrived across all of them.
    pub fn start_many(upstreams: &[u16]) -> Self {
        let state: std::sync::Arc<(std::sync::Mutex<HoldState>, std::sync::Condvar)> =
            Default::default();
        let mut ports = Vec::new();
        for &upstream in upstreams {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let st = state.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().map_while(Result::ok) {
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (up, down) = (st.clone(), st.clone());
                    // A replica's link to its primary also comes through
                    // (it uses the announced port): not a client's; its
                    // commands are not counted, its stream never held.
                    let replication = std::sync::Arc::new(AtomicBool::new(false));
                    let r2 = replication.clone();
                    std::thread::spawn(move || forward_commands(client, server, &up, &replication));
                    std::thread::spawn(move || forward_replies(s2, c2, &down, &r2));
                }
            });
        }
        Self {
            port: ports[0],
            ports,
            state,
        }
    }

    /// `redis://` URLs of the proxies, comma-separated (`REDIS_URL`).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// From now on, hold the first reply until `expected` commands arrived.
    pub fn arm(&self, expected: usize, patience: Duration) {
        let mut s = self.state.0.lock().unwrap();
        *s = HoldState {
            armed: Some((expected, patience)),
            ..HoldState::default()
        };
    }

    /// The start of the reply that was held, escaped (for diagnosis).
    pub fn held_reply(&self) -> String {
        self.state.0.lock().unwrap().held.clone()
    }

    /// Commands the client had sent when it got its first reply after
    /// [`HoldingProxy::arm`].
    pub fn sent_before_first_reply(&self) -> Option<usize> {
        self.state.0.lock().unwrap().seen_before_reply
    }
}

/// Counts RESP commands (`*N` arrays of `$len` bulk strings) as they pass.
pub(super) fn forward_commands(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    state: &(std::sync::Mutex<HoldState>, std::sync::Condvar),
    replication: &AtomicBool,
) {
    use std::io::{Read, Write};
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut complete = 0;
        while let Some(len) = resp_command_len(&pending) {
            let name = resp_command_name(&pending[..len]);
            if ["psync", "sync", "replconf"].contains(&name.as_str()) {
                replication.store(true, Ordering::SeqCst);
            }
            pending.drain(..len);
            complete += 1;
        }
        if complete > 0 && !replication.load(Ordering::SeqCst) {
            let mut s = state.0.lock().unwrap();
            s.sent += complete;
            state.1.notify_all();
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

pub(super) fn forward_replies(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    state: &(std::sync::Mutex<HoldState>, std::sync::Condvar),
    replication: &AtomicBool,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !replication.load(Ordering::SeqCst) {
            let mut s = state.0.lock().unwrap();
            if let Some((expected, patience)) = s.armed.take() {
                let until = std::time::Instant::now() + patience;
                while s.sent < expected && std::time::Instant::now() < until {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    s = state.1.wait_timeout(s, left).unwrap().0;
                }
                s.seen_before_reply = Some(s.sent);
                s.held = String::from_utf8_lossy(&buf[..n.min(80)])
                    .escape_debug()
                    .to_string();
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// The lower-case name of the complete RESP command `b` (its first bulk
/// string).
pub(super) fn resp_command_name(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    text.split("\r\n")
        .nth(2)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The byte length of the first complete RESP command in `b`, if any.
pub(super) fn resp_command_len(b: &[u8]) -> Option<usize> {
    fn line(b: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    if b.first() != Some(&b'*') {
        return None;
    }
    let (items, mut at) = line(b, 0)?;
    for _ in 0..items {
        if b.get(at) != Some(&b'$') {
            return None;
        }
        let (len, start) = line(b, at)?;
        at = start + len + 2;
        if at > b.len() {
            return None;
        }
    }
    Some(at)
}
