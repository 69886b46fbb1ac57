//! A TCP proxy on loopback for fault injection: it sits between a node and Redis and, on the
//! test's command, passes, delays (both ways, or requests and replies by different amounts),
//! holds (a partition: nothing flows, nothing is lost), cuts, refuses, or stalls one
//! connection at a chosen request (and moves that stall forward to a later request).
//!
//! Every connection is two pumps (client to server, server to client). A pump reads a chunk,
//! then delivers it as the mode says at that moment; while the mode is [`Mode::Blackhole`] it
//! keeps reading (up to [`HOLD_MAX`] bytes per direction) and delivers nothing, so what was
//! sent is neither lost nor seen by the other side until the mode changes or the connection
//! is cut (then it is lost, as after a real partition that outlived TCP's patience). A stall
//! keeps the chunks it holds apart (a client's requests sent at different moments arrive as
//! different chunks), so it can let the first ones through and hold the rest.
//!
//! (A WebSocket client that reads slowly or not at all is tests/common/paced.rs's.)

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Bytes a blackholed pump holds per direction before it stops reading (TCP pushes back).
pub const HOLD_MAX: usize = 4 << 20;

/// What the proxy does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk after this delay (in order).
    Delay(Duration),
    /// Forward each chunk after a delay of its direction's: `requests` from the client to
    /// the server, `replies` back (in order).
    DelayEach {
        requests: Duration,
        replies: Duration,
    },
    /// Accept connections, forward nothing (hold it); connecting still succeeds.
    Blackhole,
    /// New connections are reset at once; open ones pass.
    Refuse,
}

/// A stall armed with [`Proxy::stall_on`]: the first client request containing every pattern
/// stops its connection's client-to-server direction (that request and all after it are held)
/// until [`release`](Stall::release), [`discard`](Stall::discard) or
/// [`advance_to`](Stall::advance_to).
pub struct Stall {
    inner: Arc<StallInner>,
}

/// [`StallInner::outcome`]: still holding.
const HELD: u8 = 0;
/// Let everything held through.
const RELEASED: u8 = 1;
/// Drop everything held and cut the connection.
const DISCARDED: u8 = 2;
/// Let through what precedes the request `next` matches; `next` holds the rest.
const ADVANCED: u8 = 3;

struct StallInner {
    patterns: Vec<Vec<u8>>,
    hit: AtomicBool,
    hit_notify: Notify,
    outcome: watch::Sender<u8>,
    /// The stall that takes over on [`ADVANCED`].
    next: Mutex<Option<Arc<StallInner>>>,
    /// The bytes held since the hit (to look for later requests).
    held: Mutex<Vec<u8>>,
    held_notify: Notify,
}

impl StallInner {
    fn new(patterns: &[&[u8]]) -> Self {
        Self {
            patterns: patterns.iter().map(|p| p.to_vec()).collect(),
            hit: AtomicBool::new(false),
            hit_notify: Notify::new(),
            outcome: watch::channel(HELD).0,
            next: Mutex::new(None),
            held: Mutex::new(Vec::new()),
            held_notify: Notify::new(),
        }
    }

    fn matches(&self, chunk: &[u8]) -> bool {
        self.patterns.iter().all(|p| contains(chunk, p))
    }

    /// Marks the stall hit, holding `chunks`.
    fn hit_with<'a>(&self, chunks: impl IntoIterator<Item = &'a Vec<u8>>) {
        let mut held = self.held.lock();
        for chunk in chunks {
            held.extend_from_slice(chunk);
        }
        drop(held);
        self.hit.store(true, Ordering::Release);
        self.hit_notify.notify_waiters();
        self.held_notify.notify_waiters();
    }

    fn hold(&self, chunk: &[u8]) {
        self.held.lock().extend_from_slice(chunk);
        self.held_notify.notify_waiters();
    }
}

impl Stall {
    /// Waits until a request matched (10 s at most: a hang guard).
    pub async fn hit(&self) {
        let wait = async {
            loop {
                let notified = self.inner.hit_notify.notified();
                if self.inner.hit.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the stalled request never came");
    }

    /// Whether a request matched.
    pub fn is_hit(&self) -> bool {
        self.inner.hit.load(Ordering::Acquire)
    }

    /// Waits until the held bytes (the matching request and what followed it on that
    /// connection) contain `pattern` `times` times in all (10 s at most).
    pub async fn held_contains(&self, pattern: &[u8], times: usize) {
        let wait = async {
            loop {
                let notified = self.inner.held_notify.notified();
                if count(&self.inner.held.lock(), pattern) >= times {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the held requests never contained {:?} {times} times",
                    String::from_utf8_lossy(pattern)
                )
            });
    }

    /// Lets the held requests through, in order.
    pub fn release(&self) {
        self.inner.outcome.send_replace(RELEASED);
    }

    /// Drops the held requests (they never reach the server) and cuts their connection.
    pub fn discard(&self) {
        self.inner.outcome.send_replace(DISCARDED);
    }

    /// Lets the held requests through up to the first one containing every one of
    /// `patterns`, which the returned stall holds, with everything after it; if none of the
    /// held requests matches, they all go and the returned stall waits for the next that does
    /// (as [`Proxy::stall_on`]). Only for a stall that was hit.
    pub fn advance_to(&self, patterns: &[&[u8]]) -> Stall {
        assert!(self.is_hit(), "advance_to on a stall that was never hit");
        let next = Arc::new(StallInner::new(patterns));
        *self.inner.next.lock() = Some(Arc::clone(&next));
        self.inner.outcome.send_replace(ADVANCED);
        Stall { inner: next }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || haystack.len() < needle.len() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Makes dropping `stream` reset the connection (RST) rather than close it: a cut, as a
/// network failure looks. A zero linger never blocks the thread (tokio's deprecation is about
/// a nonzero one).
#[allow(deprecated)]
fn reset_on_drop(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    count(haystack, needle) > 0
}

/// The proxy's state, shared with its connections.
struct Control {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by [`Proxy::cut`]: every connection opened before ends at once.
    cuts: watch::Sender<u64>,
    stalls: Mutex<Vec<Arc<StallInner>>>,
    /// Patterns whose request's reply is lost: the request passes, the reply is dropped and
    /// the connection cut. Each is used once.
    lose_reply: Mutex<Vec<Vec<u8>>>,
    accepted: AtomicUsize,
}

/// A fault-injecting TCP proxy on 127.0.0.1 (ephemeral port) in front of `target`; it stops
/// (and resets its connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target`, passing.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        Self::serve(listener, target)
    }

    /// Starts a proxy to `target` on `port` (which must be free).
    pub async fn start_on(port: u16, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a proxy on its port");
        Self::serve(listener, target)
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let control = Arc::new(Control {
            target,
            mode: watch::channel(Mode::Pass).0,
            cuts: watch::channel(0).0,
            stalls: Mutex::new(Vec::new()),
            lose_reply: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&control)));
        Self {
            addr,
            control,
            task,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:port` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Sets what happens to the bytes from now on (held bytes flow again on `Pass`).
    pub fn set(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.control.mode.borrow()
    }

    /// Resets every open connection now, in both directions; what they held is lost.
    pub fn cut(&self) {
        self.control.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.control.accepted.load(Ordering::Relaxed)
    }

    /// Arms a stall on the first client request (a chunk) containing every one of `patterns`.
    pub fn stall_on(&self, patterns: &[&[u8]]) -> Stall {
        let inner = Arc::new(StallInner::new(patterns));
        self.control.stalls.lock().push(Arc::clone(&inner));
        Stall { inner }
    }

    /// The next client request containing `pattern` reaches the server, but its reply is
    /// dropped and its connection cut: the client can't tell whether it ran.
    pub fn lose_reply_to(&self, pattern: &[u8]) {
        self.control.lose_reply.lock().push(pattern.to_vec());
    }

    /// Whether a lost reply armed with [`lose_reply_to`](Self::lose_reply_to) is still waiting
    /// for its request.
    pub fn reply_loss_pending(&self) -> bool {
        !self.control.lose_reply.lock().is_empty()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        control.accepted.fetch_add(1, Ordering::Relaxed);
        if *control.mode.borrow() == Mode::Refuse {
            reset_on_drop(&client);
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, Arc::clone(&control)));
    }
}

/// One proxied connection: connects to the target, then pumps both ways until either side
/// closes or the proxy cuts it.
async fn connection(client: TcpStream, control: Arc<Control>) {
    let mut cuts = control.cuts.subscribe();
    cuts.mark_unchanged();
    let Ok(server) = TcpStream::connect(control.target).await else {
        reset_on_drop(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    reset_on_drop(&client);
    reset_on_drop(&server);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Set by the upstream pump when a request whose reply must be lost went through.
    let lose_next_reply = Arc::new(AtomicBool::new(false));
    let up = pump(
        client_read,
        server_write,
        Arc::clone(&control),
        Direction::Up(Arc::clone(&lose_next_reply)),
    );
    let down = pump(
        server_read,
        client_write,
        Arc::clone(&control),
        Direction::Down(lose_next_reply),
    );
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cuts.changed() => {}
    }
    // Dropping both halves of each socket resets it (linger 0).
}

enum Direction {
    /// Client to server: looks for stalls and lost replies.
    Up(Arc<AtomicBool>),
    /// Server to client: drops the reply a lost-reply rule chose.
    Down(Arc<AtomicBool>),
}

/// Why a pump stopped.
struct Ended;

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: Arc<Control>,
    direction: Direction,
) -> Ended {
    let mut mode = control.mode.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes read and free to go as soon as the mode lets them (not while blackholed).
    let mut ready: Vec<u8> = Vec::new();
    // The stall this connection hit, and the chunks it holds, oldest first.
    let mut stall: Option<Arc<StallInner>> = None;
    let mut stalled: VecDeque<Vec<u8>> = VecDeque::new();
    // A request whose reply must be lost was read: its reply goes once it was delivered.
    let mut lose_armed = false;
    loop {
        let current = *mode.borrow_and_update();
        if let Some(s) = stall.take() {
            let outcome = *s.outcome.borrow();
            match outcome {
                HELD => stall = Some(s),
                RELEASED => ready.extend(stalled.drain(..).flatten()),
                DISCARDED => return Ended,
                _ => {
                    let next = s.next.lock().take().expect("advanced to a stall");
                    match stalled.iter().position(|c| next.matches(c)) {
                        Some(i) => {
                            ready.extend(stalled.drain(..i).flatten());
                            next.hit_with(&stalled);
                            stall = Some(next);
                        }
                        None => {
                            ready.extend(stalled.drain(..).flatten());
                            control.stalls.lock().push(next);
                        }
                    }
                }
            }
        }
        if current != Mode::Blackhole && !ready.is_empty() {
            let delay = match (current, &direction) {
                (Mode::Delay(d), _) => Some(d),
                (Mode::DelayEach { requests, .. }, Direction::Up(_)) => Some(requests),
                (Mode::DelayEach { replies, .. }, Direction::Down(_)) => Some(replies),
                _ => None,
            };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if to.write_all(&ready).await.is_err() {
                return Ended;
            }
            ready.clear();
            if let (Direction::Up(lose), true) = (&direction, lose_armed) {
                // Only once the request is on its way may its reply be dropped.
                lose_armed = false;
                lose.store(true, Ordering::Release);
            }
            continue;
        }
        let kept = ready.len() + stalled.iter().map(Vec::len).sum::<usize>();
        let room = kept < HOLD_MAX;
        let stall_changed = async {
            match &stall {
                Some(s) => {
                    let mut rx = s.outcome.subscribe();
                    let _ = rx.wait_for(|o| *o != HELD).await;
                }
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            read = from.read(&mut buf), if room => match read {
                Ok(0) | Err(_) => return Ended,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
            () = stall_changed => continue,
        };
        let chunk = &buf[..n];
        match &direction {
            Direction::Up(_) => {
                let mut rules = control.lose_reply.lock();
                if let Some(i) = rules.iter().position(|p| contains(chunk, p)) {
                    rules.remove(i);
                    lose_armed = true;
                }
                drop(rules);
                if let Some(s) = &stall {
                    s.hold(chunk);
                    stalled.push_back(chunk.to_vec());
                } else if let Some(s) = take_stall(&control, chunk) {
                    stalled.push_back(chunk.to_vec());
                    stall = Some(s);
                } else {
                    ready.extend_from_slice(chunk);
                }
            }
            Direction::Down(lose) => {
                if lose.swap(false, Ordering::AcqRel) {
                    // The reply (and whatever came with it) is lost with the connection.
                    return Ended;
                }
                ready.extend_from_slice(chunk);
            }
        }
    }
}

/// The armed stall this request matches, if any: it is hit (and disarmed).
fn take_stall(control: &Control, chunk: &[u8]) -> Option<Arc<StallInner>> {
    let mut stalls = control.stalls.lock();
    let i = stalls.iter().position(|s| s.matches(chunk))?;
    let s = stalls.remove(i);
    drop(stalls);
    s.hit_with([&chunk.to_vec()]);
    Some(s)
}
