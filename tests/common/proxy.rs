//! A TCP proxy on loopback for fault injection: it sits between a node and Redis and, on the
//! test's command, passes, delays, holds (a partition: nothing flows, nothing is lost), cuts,
//! refuses, or stalls one connection at a chosen request.
//!
//! Every connection is two pumps (client to server, server to client). A pump reads a chunk,
//! then delivers it as the mode says at that moment; while the mode is [`Mode::Blackhole`] it
//! keeps reading (up to [`HOLD_MAX`] bytes per direction) and delivers nothing, so what was
//! sent is neither lost nor seen by the other side until the mode changes or the connection
//! is cut (then it is lost, as after a real partition that outlived TCP's patience).

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
    /// Accept connections, forward nothing (hold it); connecting still succeeds.
    Blackhole,
    /// New connections are reset at once; open ones pass.
    Refuse,
}

/// A stall armed with [`Proxy::stall_on`]: the first client request containing every pattern
/// stops its connection's client-to-server direction (that request and all after it are held)
/// until [`release`](Stall::release) or [`discard`](Stall::discard).
pub struct Stall {
    inner: Arc<StallInner>,
}

struct StallInner {
    patterns: Vec<Vec<u8>>,
    hit: AtomicBool,
    hit_notify: Notify,
    /// 0 held, 1 released, 2 discarded.
    outcome: watch::Sender<u8>,
    /// Chunks held since the hit, and the bytes of each (to look for later requests).
    held: Mutex<Vec<u8>>,
    held_notify: Notify,
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
        self.inner.outcome.send_replace(1);
    }

    /// Drops the held requests (they never reach the server) and cuts their connection.
    pub fn discard(&self) {
        self.inner.outcome.send_replace(2);
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
        let inner = Arc::new(StallInner {
            patterns: patterns.iter().map(|p| p.to_vec()).collect(),
            hit: AtomicBool::new(false),
            hit_notify: Notify::new(),
            outcome: watch::channel(0).0,
            held: Mutex::new(Vec::new()),
            held_notify: Notify::new(),
        });
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
    // Bytes read but not yet delivered (blackholed or stalled), oldest first.
    let mut held: Vec<u8> = Vec::new();
    let mut stall: Option<Arc<StallInner>> = None;
    // A request whose reply must be lost is among the held bytes.
    let mut lose_armed = false;
    loop {
        let current = *mode.borrow_and_update();
        let holding =
            current == Mode::Blackhole || stall.as_ref().is_some_and(|s| *s.outcome.borrow() == 0);
        if !holding && !held.is_empty() {
            if let Some(s) = stall.take_if(|s| *s.outcome.borrow() == 2) {
                drop(s);
                return Ended;
            }
            if let Mode::Delay(d) = current {
                tokio::time::sleep(d).await;
            }
            if to.write_all(&held).await.is_err() {
                return Ended;
            }
            held.clear();
            if let (Direction::Up(lose), true) = (&direction, lose_armed) {
                // Only once the request is on its way may its reply be dropped.
                lose_armed = false;
                lose.store(true, Ordering::Release);
            }
            continue;
        }
        let room = held.len() < HOLD_MAX;
        let stall_changed = async {
            match &stall {
                Some(s) => {
                    let mut rx = s.outcome.subscribe();
                    let _ = rx.wait_for(|o| *o != 0).await;
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
            () = stall_changed, if holding => continue,
        };
        let chunk = &buf[..n];
        match &direction {
            Direction::Up(_) => {
                if stall.as_ref().is_some_and(|s| *s.outcome.borrow() == 1) {
                    stall = None; // released: a later stall may hit this connection again
                }
                match &stall {
                    None => stall = take_stall(&control, chunk),
                    Some(s) if *s.outcome.borrow() == 0 => {
                        s.held.lock().extend_from_slice(chunk);
                        s.held_notify.notify_waiters();
                    }
                    Some(_) => {}
                }
                let mut rules = control.lose_reply.lock();
                if let Some(i) = rules.iter().position(|p| contains(chunk, p)) {
                    rules.remove(i);
                    lose_armed = true;
                }
            }
            Direction::Down(lose) => {
                if lose.swap(false, Ordering::AcqRel) {
                    // The reply (and whatever came with it) is lost with the connection.
                    return Ended;
                }
            }
        }
        held.extend_from_slice(chunk);
    }
}

/// The armed stall this request matches, if any: it is hit (and disarmed).
fn take_stall(control: &Control, chunk: &[u8]) -> Option<Arc<StallInner>> {
    let mut stalls = control.stalls.lock();
    let i = stalls
        .iter()
        .position(|s| s.patterns.iter().all(|p| contains(chunk, p)))?;
    let s = stalls.remove(i);
    s.held.lock().extend_from_slice(chunk);
    s.hit.store(true, Ordering::Release);
    s.hit_notify.notify_waiters();
    s.held_notify.notify_waiters();
    Some(s)
}
