//! The Lambda Runtime API the binaries talk to, served here: the two
//! endpoints a runtime uses (the next invocation, its response), with when
//! each event was handed out and answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

/// What the runtime API serves: events to hand out, and a signal when the
/// runtime first asks for one.
/// Per event: when it was handed out, and when its response came back.
pub(super) type Timings = Mutex<Vec<(Option<Instant>, Option<Instant>)>>;

pub(super) struct RuntimeApi {
    pub(super) port: u16,
    /// Set on drop: the accept loop ends and closes its listener (a run
    /// starts hundreds of these; leaked listeners exhaust file descriptors).
    pub(super) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(super) first_next: mpsc::Receiver<Instant>,
    pub(super) answered: Arc<AtomicUsize>,
    /// Per event: when it was handed out, and when its response came back.
    pub(super) timings: Arc<Timings>,
}

pub(super) fn runtime_api(events: Vec<Vec<u8>>) -> RuntimeApi {
    // Out of ephemeral ports (see the cold-start group), wait for sockets
    // in TIME_WAIT to expire rather than fail the run.
    let listener = (0..90)
        .find_map(|_| match TcpListener::bind("127.0.0.1:0") {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_secs(1));
                None
            }
            other => Some(other),
        })
        .expect("no loopback port for 90 s")
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let timings = Arc::new(Mutex::new(vec![(None, None); events.len()]));
    let events = Arc::new(events);
    let served = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (s2, a2, t2) = (served.clone(), answered.clone(), timings.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { return };
            let (tx, events, served, answered, timings) = (
                tx.clone(),
                events.clone(),
                s2.clone(),
                a2.clone(),
                t2.clone(),
            );
            std::thread::spawn(move || serve(stream, &tx, &events, &served, &answered, &timings));
        }
    });
    RuntimeApi {
        port,
        stop,
        first_next: rx,
        answered,
        timings,
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub(super) fn serve(
    stream: TcpStream,
    first: &Mutex<Option<mpsc::Sender<Instant>>>,
    events: &[Vec<u8>],
    served: &AtomicUsize,
    answered: &AtomicUsize,
    timings: &Timings,
) {
    // One write per answer and no Nagle delay: otherwise every event waits
    // for a delayed ACK, and the load measures TCP, not the function.
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let h = h.to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            // Chunks until the empty one, then the (empty) trailer line.
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        if line.starts_with("GET") && line.contains("/invocation/next") {
            if let Some(tx) = first.lock().unwrap().take() {
                let _ = tx.send(Instant::now());
            }
            let n = served.fetch_add(1, Ordering::SeqCst);
            let Some(event) = events.get(n) else {
                if events.is_empty() {
                    return; // cold start only: the runtime is killed now
                }
                // Load done: hold the runtime here (alive, for its VmHWM)
                // until it is killed.
                std::thread::sleep(Duration::from_secs(600));
                return;
            };
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 10_000;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 lambda-runtime-aws-request-id: req-{n}\r\n\
                 lambda-runtime-deadline-ms: {deadline}\r\n\
                 lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000;Sampled=0\r\n\
                 content-length: {}\r\n\r\n",
                event.len()
            );
            let mut answer = head.into_bytes();
            answer.extend_from_slice(event);
            timings.lock().unwrap()[n].0 = Some(Instant::now());
            if out.write_all(&answer).is_err() {
                return;
            }
        } else {
            // POST /2018-06-01/runtime/invocation/req-<n>/response
            let n = line
                .split("/invocation/req-")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = n
                && let Some(t) = timings.lock().unwrap().get_mut(n)
            {
                t.1 = Some(Instant::now());
            }
            answered.fetch_add(1, Ordering::SeqCst);
            let answer = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}
