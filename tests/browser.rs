//! The example pages and the browser client in headless Chromium, driven over chromedriver's
//! WebDriver HTTP API. Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (or `CHROMIUM` and
//! `CHROMEDRIVER`); without them every test fails. Run with
//! `cargo test --features browser-tests --test browser`; screenshots go to
//! `target/browser-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[allow(dead_code)]
#[path = "../examples/chat.rs"]
mod chat;
#[allow(dead_code)]
#[path = "../examples/dashboard.rs"]
mod dashboard;
#[allow(dead_code)]
#[path = "../examples/echo.rs"]
mod echo;
#[allow(dead_code)]
#[path = "../examples/game.rs"]
mod game;
#[allow(dead_code)]
#[path = "../examples/notifications.rs"]
mod notifications;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use salvo::conn::{Acceptor, Listener};
use salvo::prelude::*;
use salvo_realtime::error::HubError;
use salvo_realtime::{
    Connection, ConnectionId, Delivery, Drain, Hub, PubSub, Publication, Rooms, Topic,
};
use serde_json::{Value, json};

/// One browser test at a time: two cores, and each starts Chromium.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// WebDriver over plain HTTP

fn tool(env: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "browser tests need {} (set {env} or run .ci/browser, which installs the Debian packages \
         `chromium` and `chromium-driver`)",
        path.display()
    );
    path
}

/// A chromedriver process (in its own process group, killed with it on drop).
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Driver {
    async fn start() -> Self {
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        tool("CHROMIUM", "/usr/bin/chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .args(std::env::var("CHROMEDRIVER_LOG").map(|p| format!("--log-path={p}")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        };
        let driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(res) = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                && let Ok(v) = res.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn session(&self) -> Session {
        let profile = std::env::temp_dir().join(format!(
            "rt-browser-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--disable-breakpad", "--disable-crash-reporter", "--window-size=1100,720",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        // Chromium can fail to start on a loaded two-core machine: a few attempts, each
        // reported, before giving up.
        let mut attempts = Vec::new();
        let id = loop {
            let res: Value = self
                .http
                .post(format!("{}/session", self.base))
                .json(&caps)
                .send()
                .await
                .expect("new session")
                .json()
                .await
                .unwrap();
            if let Some(id) = res["value"]["sessionId"].as_str() {
                break id.to_owned();
            }
            attempts.push(res);
            assert!(attempts.len() < 3, "no browser session: {attempts:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
            profile,
        }
    }
}

fn rand_suffix() -> u64 {
    ConnectionId::next().as_u64() ^ (Instant::now().elapsed().as_nanos() as u64)
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the browsers it started share the group.
        let _ = Command::new("kill")
            .args(["-KILL", "--"])
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.wait();
    }
}

/// One browser.
struct Session {
    http: reqwest::Client,
    url: String,
    profile: PathBuf,
}

impl Session {
    async fn post(&self, path: &str, body: Value) -> Value {
        let res: Value = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("webdriver request")
            .json()
            .await
            .expect("webdriver answer");
        if res["value"].get("error").is_some() {
            panic!("webdriver {path}: {res}");
        }
        res["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Polls `script` until it returns something truthy (returned), or fails after [`WAIT`].
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            if Instant::now() > deadline {
                let state = self.js("return document.body.innerText").await;
                panic!(
                    "timed out waiting for {what}; page text:\n{}",
                    state.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let res: Value = self
            .http
            .get(format!("{}/screenshot", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let png = base64_decode(res["value"].as_str().expect("screenshot data"));
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A server on `addr` (port 0: any) until stopped.
struct Running {
    addr: SocketAddr,
    handle: salvo::server::ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(addr: SocketAddr, router: Router) -> Self {
        let acceptor = TcpListener::new(addr).bind().await;
        let addr = acceptor.holdings()[0]
            .local_addr
            .clone()
            .into_std()
            .unwrap();
        let server = Server::new(acceptor);
        let handle = server.handle();
        let task = tokio::spawn(async move { server.serve(router).await });
        Self { addr, handle, task }
    }

    /// The chat example on a fresh `Rooms` hub, on any port.
    async fn chat() -> Self {
        Self::chat_on(chat::channels(Rooms::new())).await
    }

    /// The chat example's router on `hub`, on any port.
    async fn chat_on(hub: impl Hub) -> Self {
        Self::start(any_port(), chat::router(hub, Drain::new())).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(self) {
        self.handle.stop_forceful();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// Wraps a hub to let a test end chosen connections from the server side.
#[derive(Clone)]
struct Spy<H> {
    hub: H,
    conns: Arc<Mutex<Vec<Tracked>>>,
    joins: Arc<AtomicUsize>,
}

/// A joined connection: its id, user and kill switch.
type Tracked = (ConnectionId, Option<String>, Arc<Kill>);

#[derive(Default)]
struct Kill {
    killed: AtomicBool,
    waker: AtomicWaker,
}

/// A subscription that ends when killed: the endpoint then closes the connection.
struct Killable<S> {
    inner: S,
    kill: Arc<Kill>,
}

impl<S: Stream<Item = Delivery> + Unpin> Stream for Killable<S> {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.kill.waker.register(cx.waker());
        if self.kill.killed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.inner.poll_next_unpin(cx)
    }
}

impl<H> Spy<H> {
    fn new(hub: H) -> Self {
        Self {
            hub,
            conns: Arc::default(),
            joins: Arc::default(),
        }
    }

    /// Ends the subscriptions of `user`'s connections (`None`: anonymous ones); returns how many.
    fn kill(&self, user: Option<&str>) -> usize {
        let conns = self.conns.lock();
        let mut n = 0;
        for (_, _, kill) in conns.iter().filter(|(_, who, _)| who.as_deref() == user) {
            kill.killed.store(true, Ordering::Release);
            kill.waker.wake();
            n += 1;
        }
        n
    }

    fn joins(&self) -> usize {
        self.joins.load(Ordering::Relaxed)
    }
}

salvo_realtime::hub::delegate_hub! {
    impl[H: Hub] Hub for Spy<H>, to hub {
        type Subscription = Killable<H::Subscription>;

        async fn join(&self, conn: &Connection) -> Result<Self::Subscription, HubError> {
            let inner = self.hub.join(conn).await?;
            let kill = Arc::new(Kill::default());
            self.conns.lock().push((
                conn.id(),
                conn.user_id().map(str::to_owned),
                Arc::clone(&kill),
            ));
            self.joins.fetch_add(1, Ordering::Relaxed);
            Ok(Killable { inner, kill })
        }

        async fn leave(&self, conn: &Connection, subscription: Self::Subscription) {
            self.conns.lock().retain(|(id, _, _)| *id != conn.id());
            self.hub.leave(conn, subscription.inner).await;
        }
        // The rest (receive, the channel protocol's commands) goes to the wrapped hub as it is.
    }
}

// ---------------------------------------------------------------------------------------------
// Page helpers

const MEMBERS: &str =
    "return [...document.querySelectorAll('#members li')].map(li => li.dataset.user)";
const TEXTS: &str =
    "return [...document.querySelectorAll('#log li.msg .text')].map(s => s.textContent)";

/// Fills in the login form and joins.
async fn log_in(page: &Session, server: &Running, name: &str, room: &str) {
    page.goto(&server.url("/")).await;
    page.wait_for(
        "the login form",
        "return document.getElementById('name') !== null",
    )
    .await;
    page.js(&format!(
        "document.getElementById('name').value = {name:?}; document.getElementById('room').value = {room:?}; \
         document.getElementById('login').requestSubmit()"
    ))
    .await;
    page.wait_for(
        "the connection",
        "return document.getElementById('status').dataset.state === 'open'",
    )
    .await;
}

async fn say(page: &Session, text: &str) {
    page.js(&format!(
        "document.getElementById('text').value = {text:?}; document.getElementById('composer').requestSubmit()"
    ))
    .await;
}

async fn wait_members(page: &Session, expected: &[&str]) {
    let script = format!(
        "const m = {}; return JSON.stringify(m) === {:?}",
        MEMBERS.trim_start_matches("return "),
        serde_json::to_string(expected).unwrap()
    );
    page.wait_for(&format!("members {expected:?}"), &script)
        .await;
}

/// Waits until `page`'s chat shows its socket open.
async fn wait_open(page: &Session) {
    page.wait_for(
        "the socket to be open",
        "return document.getElementById('status').dataset.state === 'open'",
    )
    .await;
}

async fn texts(page: &Session) -> Vec<String> {
    serde_json::from_value(page.js(TEXTS).await).unwrap()
}

async fn wait_text(page: &Session, text: &str) {
    let script = format!("{TEXTS}.includes({text:?})");
    page.wait_for(&format!("message {text:?}"), &script).await;
}

/// alice and bob, a page each, logged into the chat's lobby on `server`; returns once alice's
/// page lists both.
async fn alice_and_bob_in_lobby(driver: &Driver, server: &Running) -> (Session, Session) {
    let (alice, bob) = (driver.session().await, driver.session().await);
    log_in(&alice, server, "alice", "lobby").await;
    log_in(&bob, server, "bob", "lobby").await;
    wait_members(&alice, &["alice", "bob"]).await;
    (alice, bob)
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

// ---------------------------------------------------------------------------------------------
// Chat

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_two_pages_see_each_others_messages_and_presence() {
    let _serial = SERIAL.lock().await;
    let server = Running::chat().await;
    let driver = Driver::start().await;
    let (alice, bob) = (driver.session().await, driver.session().await);

    log_in(&alice, &server, "alice", "lobby").await;
    // Bob comes in through the page's `#name=..&room=..` link.
    bob.goto(&server.url("/#name=bob&room=lobby")).await;
    wait_members(&alice, &["alice", "bob"]).await;
    wait_members(&bob, &["alice", "bob"]).await;

    say(&alice, "hello bob").await;
    wait_text(&bob, "hello bob").await;
    say(&bob, "hi alice").await;
    wait_text(&alice, "hi alice").await;
    assert_eq!(texts(&alice).await, ["hello bob", "hi alice"]);
    assert_eq!(texts(&bob).await, ["hello bob", "hi alice"]);
    alice
        .wait_for(
            "bob's arrival line",
            "return document.querySelector('#log li.event')?.textContent === 'bob joined'",
        )
        .await;
    alice.screenshot("chat-alice").await;
    bob.screenshot("chat-bob").await;

    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_closing_a_page_shows_the_user_leaving() {
    let _serial = SERIAL.lock().await;
    let server = Running::chat().await;
    let driver = Driver::start().await;
    let (alice, bob) = alice_and_bob_in_lobby(&driver, &server).await;

    bob.quit().await; // closes the browser, and with it the socket
    wait_members(&alice, &["alice"]).await;
    alice.wait_for("bob's departure line", "return [...document.querySelectorAll('#log li.event')].some(li => li.textContent === 'bob left')").await;
    alice.screenshot("chat-bob-left").await;
    alice.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_reconnects_after_its_socket_drops_and_shows_each_message_once() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(chat::channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let alice = driver.session().await;
    log_in(&alice, &server, "alice", "lobby").await;

    let expected: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    for (i, text) in expected.iter().enumerate() {
        if i == 15 || i == 40 {
            assert_eq!(spy.kill(Some("alice")), 1, "alice's one connection");
        }
        let publication = Publication::new(json!({ "text": text }).to_string()).sender("bot");
        rooms.broadcast("lobby", publication).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_text(&alice, "m59").await;
    wait_open(&alice).await;
    assert_eq!(
        texts(&alice).await,
        expected,
        "every message exactly once, in order"
    );
    let duplicates = alice.js("return window.chat.socket.duplicates").await;
    assert_eq!(
        duplicates,
        json!(0),
        "resume was exact: the dedup net caught nothing"
    );
    assert!(spy.joins() >= 3, "the page reconnected after each drop");
    alice.screenshot("chat-after-drops").await;
    alice.quit().await;
    server.stop().await;
}

/// A chat message from the server side.
fn bot(text: &str) -> Publication {
    Publication::new(json!({ "text": text }).to_string()).sender("bot")
}

/// Waits until `user` has exactly one connection joined (an old one may still be leaving).
async fn wait_one_connection<H: Sync>(spy: &Spy<H>, user: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = spy
            .conns
            .lock()
            .iter()
            .filter(|(_, who, _)| who.as_deref() == Some(user))
            .count();
        if n == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{user} has {n} connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_resumes_into_a_busy_room_with_full_history() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(chat::channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    // More than the room's 256 messages of history before anyone is in it.
    for i in 0..300 {
        rooms
            .broadcast("busy", bot(&format!("h{i}")))
            .await
            .unwrap();
    }
    let driver = Driver::start().await;
    let alice = driver.session().await;
    log_in(&alice, &server, "alice", "busy").await;
    alice
        .js("window.codes = []; window.chat.socket.on('status', \
             (s) => s.state === 'reconnecting' && window.codes.push(s.code ?? null))")
        .await;
    // The page asks for the last 50; a direct message gives it a position in `@alice` too.
    wait_text(&alice, "h299").await;
    rooms.send_to_user("alice", bot("d0")).await.unwrap();
    wait_text(&alice, "d0").await;
    assert_eq!(
        spy.joins(),
        1,
        "joining the full room kept the first connection"
    );
    let mut expected: Vec<String> = (250..300).map(|i| format!("h{i}")).collect();
    let mut direct = vec!["d0".to_owned()];

    // Twice: the socket drops, a burst fills most of the history before the page is back,
    // and more arrives, paced, while it reconnects and replays. Each time the page misses
    // fewer than 256 messages, so the resume is exact.
    for round in 0..2 {
        wait_one_connection(&spy, "alice").await;
        assert_eq!(spy.kill(Some("alice")), 1, "alice's one connection");
        for i in 0..150 {
            let text = format!("r{round}-{i}");
            rooms.broadcast("busy", bot(&text)).await.unwrap();
            expected.push(text);
        }
        for i in 150..200 {
            if i == 175 {
                let text = format!("d{}", round + 1);
                rooms.send_to_user("alice", bot(&text)).await.unwrap();
                direct.push(text);
            }
            let text = format!("r{round}-{i}");
            rooms.broadcast("busy", bot(&text)).await.unwrap();
            expected.push(text);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wait_text(&alice, expected.last().unwrap()).await;
        wait_text(&alice, direct.last().unwrap()).await;
        wait_open(&alice).await;
    }

    let shown = texts(&alice).await;
    let (dms, room): (Vec<String>, Vec<String>) =
        shown.into_iter().partition(|t| t.starts_with('d'));
    assert_eq!(room, expected, "every room message exactly once, in order");
    assert_eq!(dms, direct, "every direct message exactly once, in order");
    let duplicates = alice.js("return window.chat.socket.duplicates").await;
    assert_eq!(duplicates, json!(0), "the dedup net caught nothing");
    let notices = alice
        .js("return document.querySelectorAll('#log li.notice').length")
        .await;
    assert_eq!(notices, json!(0), "no reset or lag notice");
    let codes = alice.js("return window.codes").await;
    assert_eq!(
        codes,
        json!([1000, 1000]),
        "closed only by the test's two drops (never 1008)"
    );
    assert_eq!(spy.joins(), 3, "one reconnect per drop");
    alice.screenshot("chat-busy-room-resume").await;
    alice.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_shows_a_reset_notice_after_a_server_restart() {
    let _serial = SERIAL.lock().await;
    let drain = Drain::new();
    let server = Running::start(
        any_port(),
        chat::router(chat::channels(Rooms::new()), drain.clone()),
    )
    .await;
    let addr = server.addr;
    let driver = Driver::start().await;
    let alice = driver.session().await;
    log_in(&alice, &server, "alice", "lobby").await;
    say(&alice, "before the restart").await;
    wait_text(&alice, "before the restart").await;

    // What the example does on Ctrl-C, then a new process: a new hub (new epoch), same port.
    assert_eq!(drain.close_all(Duration::from_secs(5)).await, 0);
    server.stop().await;
    let server = Running::start(
        addr,
        chat::router(chat::channels(Rooms::new()), Drain::new()),
    )
    .await;

    alice
        .wait_for(
            "the reset notice",
            "return document.querySelector('#log li.notice.reset')?.textContent",
        )
        .await;
    let notice = alice
        .js("return document.querySelector('#log li.notice.reset').textContent")
        .await;
    assert_eq!(
        notice,
        json!("The server restarted: earlier messages are unavailable.")
    );
    wait_open(&alice).await;
    say(&alice, "after the restart").await;
    wait_text(&alice, "after the restart").await;
    assert_eq!(
        texts(&alice).await,
        ["before the restart", "after the restart"]
    );
    alice.screenshot("chat-after-restart").await;
    alice.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_refuses_empty_and_long_nicknames() {
    let server = Running::chat().await;
    let http = reqwest::Client::new();
    // The handshake is checked before identity: a request must be an upgrade (offering the
    // channel protocol, as the page does: it names no room when it connects) to get as far as
    // the nickname check.
    let status = |name: &str, upgrade: bool| {
        let url = server.url(&format!("/ws?name={name}"));
        let mut req = http.get(url);
        if upgrade {
            req = req
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-protocol", "salvo-realtime.v1");
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("", true).await, 401);
    assert_eq!(status(&"x".repeat(25), true).await, 400);
    assert_eq!(status("alice", true).await, 101, "a good nickname upgrades");
    assert_eq!(
        status("alice", false).await,
        400,
        "a named plain GET is not an upgrade"
    );
    server.stop().await;
}

/// The texts of the messages the page holds for `room` (shown or not), in order.
async fn room_texts(page: &Session, room: &str) -> Vec<String> {
    let script = format!(
        "return window.chat.rooms.get({room:?}).items.filter(li => li.classList.contains('msg')) \
         .map(li => li.querySelector('.text').textContent)"
    );
    serde_json::from_value(page.js(&script).await).unwrap()
}

/// Joins another room through the page's form (on the same socket).
async fn add_room(page: &Session, room: &str) {
    page.js(&format!(
        "document.getElementById('new-room').value = {room:?}; \
         document.getElementById('add-room').requestSubmit()"
    ))
    .await;
}

async fn wait_subscribed(page: &Session, room: &str) {
    page.wait_for(
        &format!("the subscription to {room}"),
        &format!("return window.chat.rooms.get({room:?})?.sub.state === 'subscribed'"),
    )
    .await;
}

/// Waits until the hub has seen `joins` connections and `user` has exactly one joined.
async fn wait_connection<H: Sync>(spy: &Spy<H>, user: &str, joins: usize) -> ConnectionId {
    let deadline = Instant::now() + WAIT;
    loop {
        let conns: Vec<ConnectionId> = spy
            .conns
            .lock()
            .iter()
            .filter(|(_, who, _)| who.as_deref() == Some(user))
            .map(|(id, _, _)| *id)
            .collect();
        if spy.joins() == joins && conns.len() == 1 {
            return conns[0];
        }
        assert!(
            Instant::now() < deadline,
            "{user}: {} connections, {} joins (want 1 and {joins})",
            conns.len(),
            spy.joins()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_one_socket_carries_two_rooms_and_resumes_both_after_drops() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(chat::channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let alice = driver.session().await;
    log_in(&alice, &server, "alice", "lobby").await;
    add_room(&alice, "random").await;
    wait_subscribed(&alice, "lobby").await;
    wait_subscribed(&alice, "random").await;
    let conn = wait_connection(&spy, "alice", 1).await;
    let mut joined = rooms.rooms_of(conn);
    joined.sort();
    assert_eq!(
        joined.iter().map(Topic::as_str).collect::<Vec<_>>(),
        ["lobby", "random"],
        "both rooms on the page's one socket"
    );

    // Both rooms get messages, interleaved, while the server drops the socket twice.
    let (mut lobby, mut random) = (Vec::new(), Vec::new());
    for i in 0..40 {
        if i == 10 || i == 25 {
            wait_connection(&spy, "alice", if i == 10 { 1 } else { 2 }).await;
            assert_eq!(spy.kill(Some("alice")), 1, "alice's one connection");
        }
        for (room, texts) in [("lobby", &mut lobby), ("random", &mut random)] {
            let text = format!("{room}-{i}");
            rooms.broadcast(room, bot(&text)).await.unwrap();
            texts.push(text);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    alice
        .wait_for(
            "the last message of both rooms",
            "const has = (r, t) => window.chat.rooms.get(r).items.some(li => li.querySelector('.text')?.textContent === t); \
             return has('lobby', 'lobby-39') && has('random', 'random-39')",
        )
        .await;
    wait_open(&alice).await;
    assert_eq!(
        room_texts(&alice, "lobby").await,
        lobby,
        "lobby: every message exactly once, in order"
    );
    assert_eq!(
        room_texts(&alice, "random").await,
        random,
        "random: every message exactly once, in order"
    );
    let duplicates = alice.js("return window.chat.socket.duplicates").await;
    assert_eq!(duplicates, json!(0), "resume was exact per room");
    let notices = alice
        .js("return [...window.chat.rooms.values()].flatMap(r => r.items).filter(li => li.classList.contains('notice')).length")
        .await;
    assert_eq!(notices, json!(0), "no reset, lag or error notice");
    assert_eq!(spy.joins(), 3, "one socket, reconnected once per drop");
    let unread = alice
        .js("return document.querySelector('#rooms li[data-room=\"lobby\"] .unread')?.textContent")
        .await;
    assert!(unread.is_string(), "the lobby tab counts unread messages");
    alice.screenshot("chat-two-rooms-one-socket").await;
    alice.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_staff_rooms_are_refused_to_all_but_boss() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(chat::channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let (alice, boss) = (driver.session().await, driver.session().await);
    log_in(&alice, &server, "alice", "lobby").await;
    wait_subscribed(&alice, "lobby").await;
    add_room(&alice, "staff-room").await;
    let code = alice
        .wait_for(
            "the refusal on the tab",
            "return document.querySelector('#rooms li[data-room=\"staff-room\"]')?.dataset.error",
        )
        .await;
    assert_eq!(code, json!("forbidden"));
    let notice = alice
        .wait_for(
            "the refusal in the log",
            "return document.querySelector('#log li.notice.error[data-code=\"forbidden\"]')?.textContent",
        )
        .await;
    assert!(
        notice
            .as_str()
            .unwrap()
            .contains("staff rooms are for boss"),
        "the server's message is shown: {notice}"
    );
    let state = alice
        .js("return window.chat.rooms.get('staff-room').sub.state")
        .await;
    assert_eq!(state, json!("refused"));
    let conn = wait_connection(&spy, "alice", 1).await;
    let joined = rooms.rooms_of(conn);
    assert_eq!(
        joined.iter().map(Topic::as_str).collect::<Vec<_>>(),
        ["lobby"],
        "the refused room was not joined; the socket stayed up"
    );
    alice.screenshot("chat-staff-refused").await;

    log_in(&boss, &server, "boss", "staff-room").await;
    wait_subscribed(&boss, "staff-room").await;
    say(&boss, "staff meeting at 3").await;
    wait_text(&boss, "staff meeting at 3").await;
    let tab_error = boss
        .js("return document.querySelector('#rooms li[data-room=\"staff-room\"]').dataset.error ?? null")
        .await;
    assert_eq!(tab_error, json!(null), "boss is let in");
    alice.quit().await;
    boss.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_moderation_refuses_a_message_and_the_server_stamps_the_rest() {
    let _serial = SERIAL.lock().await;
    let server = Running::chat().await;
    let driver = Driver::start().await;
    let (alice, bob) = alice_and_bob_in_lobby(&driver, &server).await;
    wait_members(&bob, &["alice", "bob"]).await;

    say(&alice, "well, darn it").await;
    let notice = alice
        .wait_for(
            "the refusal shown to the sender",
            "return document.querySelector('#log li.notice.error[data-code=\"moderated\"]')?.textContent",
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("keep it civil"),
        "{notice}"
    );
    // A name sent by the client is not trusted: the server stamps the sender's identity.
    alice
        .js("window.chat.socket.publish('lobby', { text: 'who am I', from: 'mallory' })")
        .await;
    say(&alice, "fine then").await;
    wait_text(&bob, "fine then").await;
    wait_text(&alice, "fine then").await;
    assert_eq!(
        texts(&bob).await,
        ["who am I", "fine then"],
        "bob never saw the refused message"
    );
    assert_eq!(texts(&alice).await, ["who am I", "fine then"]);
    let who = bob
        .js("return [...document.querySelectorAll('#log li.msg .who')].map(s => s.textContent)")
        .await;
    assert_eq!(who, json!(["alice", "alice"]));
    let stamped = bob
        .js("return window.chat.rooms.get('lobby').items.filter(li => li.classList.contains('msg')).map(li => li.querySelector('time').textContent !== '')")
        .await;
    assert_eq!(stamped, json!([true, true]));
    let refused = bob
        .js("return document.querySelectorAll('#log li.notice').length")
        .await;
    assert_eq!(refused, json!(0), "the refusal went to the sender alone");
    alice.screenshot("chat-moderated").await;
    bob.screenshot("chat-moderated-other").await;
    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Game

/// The marks on the page's board, `""` for a free cell.
async fn turn(page: &Session) -> Value {
    page.js("return document.getElementById('turn').textContent")
        .await
}

async fn board(page: &Session) -> Vec<String> {
    let marks = page
        .js("return [...document.querySelectorAll('#board .cell')].map(c => c.dataset.mark)")
        .await;
    serde_json::from_value(marks).unwrap()
}

async fn wait_mark(page: &Session, cell: usize, mark: &str) {
    page.wait_for(
        &format!("{mark} in cell {cell}"),
        &format!(
            "return document.querySelector('#board [data-cell=\"{cell}\"]')?.dataset.mark === {mark:?}"
        ),
    )
    .await;
}

/// Clicks a cell; returns the error code the page shows for it (`None`: the move was taken).
async fn click(page: &Session, cell: usize) -> Option<String> {
    page.js(&format!(
        "window.answered = false; const error = document.getElementById('error'); \
         const before = window.game.game.version; \
         document.querySelector('#board [data-cell=\"{cell}\"]').click(); \
         const t = setInterval(() => {{ if (error.dataset.code || window.game.game.version > before) \
         {{ clearInterval(t); window.answered = true; }} }}, 20);"
    ))
    .await;
    page.wait_for("the move's answer", "return window.answered")
        .await;
    let code = page
        .js("return document.getElementById('error').dataset.code ?? null")
        .await;
    code.as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_moves_are_calls_checked_and_broadcast_by_the_server() {
    let _serial = SERIAL.lock().await;
    let server = Running::start(
        any_port(),
        game::router(game::channels(Rooms::new()), Drain::new()),
    )
    .await;
    let driver = Driver::start().await;
    let (alice, bob) = (driver.session().await, driver.session().await);
    for (page, name) in [(&alice, "alice"), (&bob, "bob")] {
        page.goto(&server.url(&format!("/#name={name}&game=t1")))
            .await;
        page.wait_for(
            "the game room",
            "return window.game.sub?.state === 'subscribed' && document.getElementById('status').dataset.state === 'open'",
        )
        .await;
    }
    alice
        .wait_for(
            "bob in the room",
            "return document.getElementById('watching').textContent.includes('bob')",
        )
        .await;

    assert_eq!(
        click(&alice, 4).await,
        None,
        "the first move: alice plays X"
    );
    wait_mark(&bob, 4, "X").await;
    assert_eq!(click(&alice, 0).await.as_deref(), Some("not_your_turn"));
    assert_eq!(click(&bob, 4).await.as_deref(), Some("cell_taken"));
    assert_eq!(click(&bob, 0).await, None, "bob plays O");
    wait_mark(&alice, 0, "O").await;
    let error = alice
        .js("return document.getElementById('error').textContent")
        .await;
    assert_eq!(error, json!(""), "a valid move clears the last refusal");
    for (page, cell) in [(&alice, 2), (&bob, 8), (&alice, 6)] {
        assert_eq!(click(page, cell).await, None);
    }
    wait_mark(&bob, 6, "X").await;
    let expected = ["O", "", "X", "", "X", "", "X", "", "O"];
    assert_eq!(board(&alice).await, expected);
    assert_eq!(board(&bob).await, expected);
    assert_eq!(turn(&alice).await, json!("You won!"));
    assert_eq!(turn(&bob).await, json!("alice (X) won."));
    // The board's buttons are disabled now; a move sent anyway is refused by the server.
    bob.js(
        "window.game.socket.call('move', { game: 't1', cell: 1 }).catch(e => window.code = e.code)",
    )
    .await;
    let code = bob.wait_for("the refusal", "return window.code").await;
    assert_eq!(code, json!("game_over"));
    alice.screenshot("game-alice").await;
    bob.screenshot("game-bob").await;
    alice.quit().await;
    bob.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Dashboard

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_live_counts_while_page_clients_chat() {
    let _serial = SERIAL.lock().await;
    let server = Running::start(any_port(), dashboard::router(Drain::new())).await;
    let driver = Driver::start().await;
    let page = driver.session().await;
    page.goto(&server.url("/")).await;
    page.wait_for(
        "the stats stream",
        "return document.getElementById('status').textContent === 'live'",
    )
    .await;
    page.js("document.getElementById('add').click()").await;
    page.wait_for(
        "ten connections counted by the hub",
        "return Number(document.getElementById('open').textContent) >= 10",
    )
    .await;
    page.wait_for(
        "a message rate",
        "return Number(document.getElementById('out-rate').textContent) > 0",
    )
    .await;
    // Let the chart draw a few seconds of traffic for the screenshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    page.screenshot("dashboard").await;
    page.js("document.getElementById('remove').click()").await;
    page.wait_for(
        "the connections closed",
        "return document.getElementById('open').textContent === '0'",
    )
    .await;
    page.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Echo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_text_and_binary_as_sent() {
    let _serial = SERIAL.lock().await;
    let server = Running::start(any_port(), echo::router(Drain::new())).await;
    let driver = Driver::start().await;
    let page = driver.session().await;
    // Any page of the server's origin (this one answers 400): the endpoint checks `Origin`.
    page.goto(&server.url("/ws")).await;
    let script = format!(
        "const ws = new WebSocket('ws://{}/ws'); ws.binaryType = 'arraybuffer'; window.got = [];
         ws.onmessage = (e) => window.got.push(typeof e.data === 'string' ? e.data : [...new Uint8Array(e.data)]);
         ws.onopen = () => {{ ws.send('héllo'); ws.send(new Uint8Array([0, 1, 255])); ws.send('{{\"a\":1}}'); }};",
        server.addr
    );
    page.js(&script).await;
    let got = page
        .wait_for(
            "three echoes",
            "return window.got.length === 3 && window.got",
        )
        .await;
    assert_eq!(got, json!(["héllo", [0, 1, 255], "{\"a\":1}"]));
    page.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Notifications (SSE)

const FEED_TEXTS: &str =
    "return [...document.querySelectorAll('#feed li.item .text')].map(s => s.textContent)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_page_resumes_with_last_event_id_after_the_stream_drops() {
    let _serial = SERIAL.lock().await;
    let hub = PubSub::new();
    let spy = Spy::new(hub.clone());
    let server = Running::start(
        any_port(),
        notifications::router(hub.clone(), spy.clone(), Drain::new()),
    )
    .await;
    let driver = Driver::start().await;
    let page = driver.session().await;
    page.goto(&server.url("/")).await;
    page.wait_for(
        "the stream",
        "return document.getElementById('status').dataset.state === 'open'",
    )
    .await;

    // Through the page's own form and the HTTP endpoint, with an event name.
    page.js("document.getElementById('event').value = 'alert'; document.getElementById('text').value = 'n0'; \
             document.getElementById('publish').requestSubmit()").await;
    page.wait_for("n0", &format!("{FEED_TEXTS}.includes('n0')"))
        .await;
    let http = reqwest::Client::new();
    let mut expected = vec!["n0".to_owned()];
    for i in 1..30 {
        let text = format!("n{i}");
        if i == 10 {
            assert_eq!(spy.kill(None), 1, "the page's one stream");
        }
        let res = http
            .post(server.url("/publish"))
            .header("content-type", "text/plain")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        expected.push(text);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    page.wait_for("n29", &format!("{FEED_TEXTS}.includes('n29')"))
        .await;
    let shown: Vec<String> = serde_json::from_value(page.js(FEED_TEXTS).await).unwrap();
    assert_eq!(shown, expected, "every event exactly once, in order");
    assert_eq!(page.js("return window.feed.duplicates").await, json!(0));
    assert!(spy.joins() >= 2, "the page reconnected");
    let alert = page
        .js("return document.querySelector('#feed li.alert .text')?.textContent")
        .await;
    assert_eq!(alert, json!("n0"), "the named event arrived as one");
    page.screenshot("notifications").await;
    page.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The client script itself (src/client.js), loaded into a page of the server's origin

/// Channels that allow every topic, with a call that doesn't answer until the socket is gone.
fn open_channels(rooms: Rooms, calls: Arc<AtomicUsize>) -> salvo_realtime::channel::Channels {
    salvo_realtime::channel::Channels::new(rooms)
        .allow("*")
        .on_call("hang", move |_ctx, ()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .handler_timeout(Duration::from_secs(600))
}

/// Polls `script` until it returns `true`; after [`WAIT`], fails with what `report` returns.
async fn wait_or_report(page: &Session, what: &str, script: &str, report: &str) {
    let deadline = Instant::now() + WAIT;
    while page.js(script).await != json!(true) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            page.js(report).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a page of `server`'s origin with the client module imported as `window.m`.
async fn client_page(driver: &Driver, server: &Running) -> Session {
    let page = driver.session().await;
    page.goto(&server.url("/realtime.js")).await;
    page.js("import('/realtime.js').then((m) => { window.m = m; })")
        .await;
    page.wait_for("the client module", "return Boolean(window.m)")
        .await;
    page
}

// A publish resolves to `{id}`; commands awaiting a reply reject `disconnected` when the
// socket drops, and a call made while it is away rejects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_pending_commands_disconnected_when_the_socket_drops() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let spy = Spy::new(open_channels(rooms.clone(), Arc::clone(&calls)));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(
        "window.rt = m.channels('/ws?name=ann', { minDelay: 60000, maxDelay: 60000 }); \
         window.room = rt.subscribe('room'); \
         room.ready.then(() => rt.publish('room', { text: 'hi' })).then((r) => { window.published = r; });",
    )
    .await;
    let published = page
        .wait_for("the publish's answer", "return window.published")
        .await;
    let id = published["id"].as_str().expect("resolves to {id}");
    assert_eq!(
        published.as_object().map(|o| o.len()),
        Some(1),
        "{published}"
    );
    assert_eq!(rooms.history("room")[0].id().to_string(), id);
    page.wait_for("the echo", "return window.rt.lastId('room')")
        .await;
    assert_eq!(page.js("return window.rt.lastId('room')").await, json!(id));

    page.js(
        "window.hung = rt.call('hang').then(() => 'resolved', (e) => e.code); \
         window.hung.then((code) => { window.hungCode = code; });",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the call reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(spy.kill(Some("ann")), 1);
    let code = page
        .wait_for("the pending call's rejection", "return window.hungCode")
        .await;
    assert_eq!(code, json!("disconnected"));
    assert_eq!(
        page.js("return window.rt.state").await,
        json!("reconnecting")
    );
    page.js(
        "rt.call('hang').then(() => { window.away = 'resolved'; }, (e) => { window.away = e.code; });",
    )
    .await;
    let away = page
        .wait_for("a call while away", "return window.away")
        .await;
    assert_eq!(away, json!("disconnected"));
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// The reconnect backoff: each delay lies between half and all of a ceiling that doubles from
// `minDelay` up to `maxDelay` (equal jitter); `Math.random` is fixed so each delay is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnect_delays_grow_are_bounded_and_jittered() {
    let _serial = SERIAL.lock().await;
    let server = Running::chat().await;
    // A port nothing listens on: every attempt fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    let randoms = [0.0, 0.999, 0.5, 0.25, 0.75, 0.0, 0.999, 0.5];
    page.js(&format!(
        "const seq = {randoms:?}; let i = 0; Math.random = () => seq[i++ % seq.length]; \
         window.delays = []; \
         window.rt = m.channels('ws://{nowhere}/ws', {{ minDelay: 40, maxDelay: 300 }}); \
         rt.on('status', (s) => s.state === 'reconnecting' && window.delays.push([s.attempt, s.delay]));"
    ))
    .await;
    page.wait_for(
        "eight reconnect attempts",
        "return window.delays.length >= 8",
    )
    .await;
    page.js("window.rt.close()").await;
    let delays: Vec<(u32, f64)> =
        serde_json::from_value(page.js("return window.delays.slice(0, 8)").await).unwrap();
    let mut ceilings = Vec::new();
    for (k, ((attempt, delay), random)) in delays.iter().zip(randoms).enumerate() {
        let ceiling = (40.0 * 2f64.powi(i32::try_from(k).unwrap())).min(300.0);
        assert_eq!(*attempt as usize, k + 1);
        assert_eq!(
            *delay,
            (ceiling / 2.0 + random * ceiling / 2.0).round(),
            "attempt {attempt}"
        );
        assert!(
            ceiling / 2.0 <= *delay && *delay <= ceiling,
            "attempt {attempt}: {delay}"
        );
        ceilings.push(ceiling);
    }
    assert_eq!(
        ceilings,
        [40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0, 300.0]
    );
    let capped: Vec<f64> = delays[3..].iter().map(|(_, d)| *d).collect();
    assert!(
        capped.windows(2).any(|w| w[0] != w[1]),
        "jitter: the capped delays differ {capped:?}"
    );
    page.quit().await;
    server.stop().await;
}

// A client with more topics than the endpoint's default inbound burst (100) subscribes, and
// after a drop resubscribes them all and sends what it queued meanwhile, without one frame
// refused `rate_limited`: its commands are paced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_paces_many_resubscriptions_under_the_default_rate_limit() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::with_config(salvo_realtime::HubConfig::new().max_subscriptions(200));
    let spy = Spy::new(open_channels(rooms.clone(), Arc::default()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js("window.errors = []; window.subErrors = []; \
         window.rt = m.channels('/ws?name=many', { minDelay: 200, maxDelay: 400 }); \
         rt.on('error', (e) => window.errors.push(e.code)); \
         window.subs = []; \
         for (let i = 0; i < 150; i++) { \
           const sub = rt.subscribe('t' + i); \
           sub.on('error', (e) => window.subErrors.push(e.code)); \
           window.subs.push(sub); \
         }")
        .await;
    let all_subscribed = "return window.subs.every((s) => s.state === 'subscribed')";
    let report = "return [window.errors, window.subErrors, window.subs.map((s) => s.state)]";
    wait_or_report(&page, "150 subscriptions", all_subscribed, report).await;
    let conn = wait_connection(&spy, "many", 1).await;
    assert_eq!(rooms.rooms_of(conn).len(), 150);

    // The moment the socket is gone, the page publishes 30 messages: they wait for the next
    // socket, behind the 150 resubscriptions.
    page.js("window.ids = []; \
         rt.on('status', (s) => { \
           if (s.state !== 'reconnecting' || window.queued) return; \
           window.queued = rt.state; \
           for (let i = 0; i < 30; i++) rt.publish('t' + i, { n: i }) \
             .then((r) => window.ids.push(r.id), (e) => window.ids.push(e.code)); \
         });")
        .await;
    assert_eq!(spy.kill(Some("many")), 1);
    let report = "return [window.ids, window.errors, window.subErrors]";
    wait_or_report(
        &page,
        "30 queued publishes answered",
        "return window.ids.length === 30",
        report,
    )
    .await;
    let conn = wait_connection(&spy, "many", 2).await;
    assert_eq!(rooms.rooms_of(conn).len(), 150, "every topic resubscribed");
    let ids: Vec<String> = serde_json::from_value(page.js("return window.ids").await).unwrap();
    assert!(
        ids.iter().all(|id| id.contains('-')),
        "every queued publish got its id: {ids:?}"
    );
    assert_eq!(page.js(all_subscribed).await, json!(true));
    assert_eq!(page.js("return window.queued").await, json!("reconnecting"));
    assert_eq!(
        page.js("return window.errors").await,
        json!([]),
        "no frame refused"
    );
    assert_eq!(page.js("return window.subErrors").await, json!([]));
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The channel protocol's join replies, filters and event routing, through the client

/// Channels for the client's join replies, filters and event routing: `game:*` topics answer
/// a subscribe with `{board, join}` (`join` counts the rule's runs) and take only `move`
/// (published as `moved`, its `x` answered to the mover) and `chat` (published as sent);
/// `plain` answers a plain frame with what it got and publishes nothing; the rest is open.
fn routed_channels(rooms: Rooms) -> salvo_realtime::channel::Channels {
    use salvo_realtime::channel::{Channels, Inbound, Outcome};
    let joins = Arc::new(AtomicUsize::new(0));
    Channels::new(rooms)
        .authorize("game:*", move |_ctx, req| {
            let join = joins.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(json!({ "board": req.wildcard, "join": join })) }
        })
        .allow("*")
        .on_event("game:*", "move", |_ctx, msg: Inbound<Value>| async move {
            let x = msg.data["dx"].as_i64().unwrap_or(0);
            Ok(Outcome::publish(json!({ "x": x }))
                .event("moved")
                .with_reply(json!({ "x": x })))
        })
        .on_event("game:*", "chat", |_ctx, _msg: Inbound<Value>| async move {
            Ok(Outcome::pass())
        })
        .on_publish("plain", |_ctx, msg: Inbound<Value>| async move {
            Ok(Outcome::reply(json!({ "echoed": msg.data })))
        })
}

/// A `prices` message `{n}`, tagged `ticker` unless `ticker` is `None`.
fn tick(n: u32, ticker: Option<&str>) -> Publication {
    let p = Publication::new(json!({ "n": n }).to_string());
    match ticker {
        Some(t) => p.tag("ticker", t),
        None => p,
    }
}

// `subscription.ready` resolves to `{topic, reply}` with the authorization rule's join reply
// (`reply` undefined when there is none); a resubscription after the server drops the socket
// emits its new reply as `joined`. A connect-time topic's `$conn` `joined` notice goes to the
// topic's subscription when there is one, else to `direct`. A subscribe's `last` starts after
// that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_join_reply_through_subscribe_and_joined_after_a_reconnect() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(routed_channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(
        "window.joined = []; \
         window.rt = m.channels('/ws?name=ann', { minDelay: 50, maxDelay: 100 }); \
         window.game = rt.subscribe('game:7'); \
         game.on('joined', (j) => window.joined.push(j)); \
         game.ready.then((j) => { window.ready = j; }); \
         rt.subscribe('lobby').ready.then((j) => { window.plain = ['reply' in j, j.reply === undefined, j.topic]; });",
    )
    .await;
    let ready = page.wait_for("the join reply", "return window.ready").await;
    assert_eq!(
        ready,
        json!({ "topic": "game:7", "reply": { "board": "7", "join": 1 } })
    );
    let plain = page
        .wait_for("a subscribe without a join reply", "return window.plain")
        .await;
    assert_eq!(plain, json!([true, true, "lobby"]));
    assert_eq!(
        page.js("return window.joined").await,
        json!([]),
        "the first answer is `ready`'s alone"
    );

    wait_connection(&spy, "ann", 1).await;
    assert_eq!(spy.kill(Some("ann")), 1);
    let report = "return [window.joined, window.rt.state]";
    wait_or_report(
        &page,
        "the resubscription's `joined`",
        "return window.joined.length === 1",
        report,
    )
    .await;
    assert_eq!(
        page.js("return window.joined").await,
        json!([{ "topic": "game:7", "reply": { "board": "7", "join": 2 } }])
    );

    // Connect-time topics: with a subscription object its `joined` event, without one `direct`.
    page.js(
        "window.direct = []; window.subJoined = []; \
         window.bob = m.channels('/ws?name=bob&topic=game:9'); \
         bob.on('direct', (msg) => window.direct.push([msg.event, msg.data])); \
         window.cat = m.channels('/ws?name=cat&topic=game:5'); \
         window.catDirect = []; cat.on('direct', (msg) => window.catDirect.push(msg.event)); \
         cat.subscribe('game:5').on('joined', (j) => window.subJoined.push([j.topic, j.reply.board]));",
    )
    .await;
    let direct = page
        .wait_for(
            "bob's `direct` joined notice",
            "return window.direct.length && window.direct",
        )
        .await;
    assert_eq!(direct[0][0], json!("joined"), "{direct}");
    assert_eq!(direct[0][1]["topic"], json!("game:9"));
    assert_eq!(direct[0][1]["reply"]["board"], json!("9"));
    let sub_joined = page
        .wait_for(
            "cat's subscription's `joined`",
            "return window.subJoined.length && window.subJoined",
        )
        .await;
    assert_eq!(sub_joined, json!([["game:5", "5"]]));
    page.wait_for(
        "cat's subscription",
        "return window.cat.subscription('game:5').state === 'subscribed'",
    )
    .await;
    assert_eq!(
        page.js("return window.catDirect").await,
        json!([]),
        "the notice went to the subscription, not `direct`"
    );
    // `last`: a position kept from an earlier visit; only what came after it (not `recent`).
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(rooms.broadcast("hist", tick(n, None)).await.unwrap());
    }
    page.js(&format!(
        "window.hist = []; \
         rt.subscribe('hist', {{ last: '{}', recent: 50 }}).on('message', (msg) => window.hist.push(msg.data.n));",
        ids[0]
    ))
    .await;
    let hist = page
        .wait_for(
            "the messages after `last`",
            "return window.hist.length >= 2 && window.hist",
        )
        .await;
    assert_eq!(hist, json!([2, 3]));
    page.js("window.rt.close(); window.bob.close(); window.cat.close()")
        .await;
    page.quit().await;
    server.stop().await;
}

// A subscribe's `filter` lets only the messages with those tags through (each message shows
// its `tags`), and it is sent again when the client resubscribes after the server dropped the
// socket. `setFilter` subscribes again from the last id seen, so a message the new filter
// passes, published before the change, still comes; a filter the server refuses rejects with
// `invalid_filter` and leaves the previous one in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_filter_passes_tagged_messages_survives_a_reconnect_and_changes_with_set_filter() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(routed_channels(rooms.clone()));
    let server = Running::chat_on(spy.clone()).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js("window.got = []; window.rejoined = 0; \
         window.rt = m.channels('/ws?name=ann', { minDelay: 50, maxDelay: 100 }); \
         window.prices = rt.subscribe('prices', { filter: { tags: { ticker: ['AAPL'] } } }); \
         prices.on('message', (msg) => window.got.push([msg.data.n, msg.tags?.ticker ?? null])); \
         prices.on('joined', () => { window.rejoined += 1; });")
        .await;
    page.wait_for(
        "the subscription",
        "return window.prices.state === 'subscribed'",
    )
    .await;
    let got = async |n: u32| -> Value {
        page.wait_for(
            &format!("message {n}"),
            &format!("return window.got.some(([k]) => k === {n}) && window.got"),
        )
        .await
    };
    for (n, ticker) in [
        (1, Some("AAPL")),
        (2, Some("MSFT")),
        (3, None),
        (4, Some("AAPL")),
    ] {
        rooms.broadcast("prices", tick(n, ticker)).await.unwrap();
    }
    assert_eq!(got(4).await, json!([[1, "AAPL"], [4, "AAPL"]]));

    wait_connection(&spy, "ann", 1).await;
    assert_eq!(spy.kill(Some("ann")), 1);
    page.wait_for("the resubscription", "return window.rejoined === 1")
        .await;
    for (n, ticker) in [(5, Some("MSFT")), (6, Some("AAPL"))] {
        rooms.broadcast("prices", tick(n, ticker)).await.unwrap();
    }
    assert_eq!(
        got(6).await,
        json!([[1, "AAPL"], [4, "AAPL"], [6, "AAPL"]]),
        "the filter came back with the resubscription"
    );

    // Published before the change, passed by the new filter: comes with it (from `last`).
    rooms
        .broadcast("prices", tick(7, Some("MSFT")))
        .await
        .unwrap();
    page.js("prices.setFilter({ tags: { ticker: ['MSFT'] } }) \
           .then((j) => { window.changed = [j.topic, j.reply === undefined, prices.filter]; });")
        .await;
    let changed = page
        .wait_for("setFilter's answer", "return window.changed")
        .await;
    assert_eq!(
        changed,
        json!(["prices", true, { "tags": { "ticker": ["MSFT"] } }]),
        "no join reply here"
    );
    for (n, ticker) in [(8, Some("AAPL")), (9, Some("MSFT"))] {
        rooms.broadcast("prices", tick(n, ticker)).await.unwrap();
    }
    assert_eq!(
        got(9).await,
        json!([
            [1, "AAPL"],
            [4, "AAPL"],
            [6, "AAPL"],
            [7, "MSFT"],
            [9, "MSFT"]
        ])
    );

    page.js(
        "prices.setFilter({ tags: { 'no spaces': ['x'] } }) \
           .then(() => { window.bad = 'resolved'; }, (e) => { window.bad = [e instanceof m.RealtimeError, e.code, prices.filter]; });",
    )
    .await;
    let bad = page
        .wait_for("the refused filter", "return window.bad")
        .await;
    assert_eq!(
        bad,
        json!([true, "invalid_filter", { "tags": { "ticker": ["MSFT"] } }])
    );
    for (n, ticker) in [(10, Some("AAPL")), (11, Some("MSFT"))] {
        rooms.broadcast("prices", tick(n, ticker)).await.unwrap();
    }
    let all = got(11).await;
    assert_eq!(
        all.as_array().unwrap()[5..],
        [json!([11, "MSFT"])],
        "the previous filter stayed"
    );
    assert_eq!(
        page.js("return window.prices.state").await,
        json!("subscribed")
    );

    // Changed while the socket is away: the change goes with the resubscription.
    page.js("rt.on('status', (s) => { \
           if (s.state !== 'reconnecting' || window.offline) return; \
           window.offline = rt.state; \
           prices.setFilter({ tags: { ticker: ['AAPL'] } }) \
             .then((j) => { window.changedOffline = [j.topic, rt.state, window.rejoined]; }); \
         });")
        .await;
    wait_connection(&spy, "ann", 2).await;
    assert_eq!(spy.kill(Some("ann")), 1);
    let offline = page
        .wait_for("the change made while away", "return window.changedOffline")
        .await;
    assert_eq!(
        offline,
        json!(["prices", "open", 2]),
        "answered by the resubscription"
    );
    assert_eq!(
        page.js("return window.offline").await,
        json!("reconnecting")
    );
    for (n, ticker) in [(12, Some("MSFT")), (13, Some("AAPL"))] {
        rooms.broadcast("prices", tick(n, ticker)).await.unwrap();
    }
    let all = got(13).await;
    assert_eq!(all.as_array().unwrap()[6..], [json!([13, "AAPL"])]);
    assert_eq!(page.js("return window.rt.duplicates").await, json!(0));
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// `onEvent(name, fn)` calls `fn(data, message)` for that event name only, and stops after its
// unsubscribe function is called; `push(event, data)` resolves to the handler's answer alone
// (`undefined` without one) while `publish` resolves to the whole `{id, reply}`; an event the
// topic has no handler for rejects with a `RealtimeError` of code `unknown_event`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_on_event_routes_by_name_and_push_resolves_with_the_reply() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let server = Running::chat_on(routed_channels(rooms.clone())).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(
        "window.moved = []; window.chats = []; window.offCalls = 0; window.events = []; \
         window.rt = m.channels('/ws?name=ann'); \
         window.game = rt.subscribe('game:1'); \
         game.onEvent('moved', (data, msg) => window.moved.push([data, msg.event, msg.topic])); \
         game.onEvent('chat', (data) => window.chats.push(data)); \
         const off = game.onEvent('moved', () => { window.offCalls += 1; }); \
         window.offResult = typeof off === 'function' && off(); \
         game.on('message', (msg) => window.events.push(msg.event ?? null)); \
         game.ready.then(async () => { \
           window.pushed = await game.push('move', { dx: 3 }); \
           window.chatPushed = ['answered', await game.push('chat', { text: 'hi' })]; \
           window.published = await game.publish({ dx: 1 }, { event: 'move' }); \
           try { await game.push('fly', {}); window.fly = 'resolved'; } \
           catch (e) { window.fly = [e instanceof m.RealtimeError, e.name, e.code, e.message.length > 0]; } \
         });",
    )
    .await;
    let fly = page
        .wait_for("the refused event", "return window.fly")
        .await;
    assert_eq!(fly, json!([true, "RealtimeError", "unknown_event", true]));
    assert_eq!(page.js("return window.pushed").await, json!({ "x": 3 }));
    assert_eq!(
        page.js("return window.chatPushed.length === 2 && window.chatPushed[1] === undefined")
            .await,
        json!(true),
        "a handler without an answer: undefined"
    );
    let published = page.js("return window.published").await;
    assert_eq!(published["reply"], json!({ "x": 1 }), "{published}");
    let id = published["id"].as_str().expect("the id too");
    assert_eq!(rooms.history("game:1").last().unwrap().id().to_string(), id);
    page.wait_for("the three messages", "return window.events.length === 3")
        .await;
    assert_eq!(
        page.js("return window.moved").await,
        json!([[{ "x": 3 }, "moved", "game:1"], [{ "x": 1 }, "moved", "game:1"]])
    );
    assert_eq!(
        page.js("return window.chats").await,
        json!([{ "text": "hi" }])
    );
    assert_eq!(
        page.js("return window.events").await,
        json!(["moved", "chat", "moved"]),
        "every message, in order, for `on('message')`"
    );
    assert_eq!(page.js("return window.offCalls").await, json!(0));
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// A plain `RealtimeSocket` to a `Channels` hub: a publish handler's answer to its frame comes
// as a `reply` event `{topic, reply}` (not as a message), a connect-time topic's join reply as
// `joined`, a refused frame as an `error` event `{type, code, message}`, and tagged messages
// show their `tags`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_plain_socket_gets_handler_replies_join_replies_and_tags() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let server = Running::chat_on(routed_channels(rooms.clone())).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(
        "window.replies = []; window.topics = []; window.joinedA = []; \
         window.a = new m.RealtimeSocket('/ws?name=ann&topic=plain'); \
         a.on('reply', (r) => window.replies.push(r)); \
         a.on('joined', (j) => window.joinedA.push(j)); \
         a.on('message', (msg) => window.topics.push([msg.topic, msg.tags ?? null])); \
         a.on('status', (s) => s.state === 'open' && a.send({ a: 1 })); \
         window.joined = []; window.errors = []; \
         window.b = new m.RealtimeSocket('/ws?name=bob&topic=game:4'); \
         b.on('joined', (j) => window.joined.push(j)); \
         b.on('error', (e) => window.errors.push(e)); \
         b.on('status', (s) => s.state === 'open' && b.send({ dx: 1 }));",
    )
    .await;
    let replies = page
        .wait_for(
            "the handler's reply",
            "return window.replies.length && window.replies",
        )
        .await;
    assert_eq!(
        replies,
        json!([{ "topic": "plain", "reply": { "echoed": { "a": 1 } } }])
    );
    let joined = page
        .wait_for(
            "bob's join reply",
            "return window.joined.length && window.joined",
        )
        .await;
    assert_eq!(joined[0]["topic"], json!("game:4"), "{joined}");
    assert_eq!(joined[0]["reply"]["board"], json!("4"));
    let errors = page
        .wait_for(
            "bob's refused frame",
            "return window.errors.length && window.errors",
        )
        .await;
    assert_eq!(errors[0]["type"], json!("error"));
    assert_eq!(errors[0]["code"], json!("unknown_event"), "{errors}");
    assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()));

    rooms
        .broadcast("plain", tick(1, Some("AAPL")))
        .await
        .unwrap();
    rooms.broadcast("plain", tick(2, None)).await.unwrap();
    let topics = page
        .wait_for(
            "two messages",
            "return window.topics.length >= 2 && window.topics",
        )
        .await;
    assert_eq!(
        topics,
        json!([["plain", { "ticker": "AAPL" }], ["plain", null]]),
        "no `$conn` message: the reply came as its own event"
    );
    assert_eq!(page.js("return window.joinedA").await, json!([]));
    page.js("window.a.close(); window.b.close()").await;
    page.quit().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Identity expiry and refresh, event frames, URL functions, through the client

/// A token `<user>.<expiry in ms since the Unix epoch>` (`<user>.never`: no expiry), as a real
/// app's signed token carries its `exp`; `None` if it can't be read.
fn identity_of(token: &str) -> Option<salvo_realtime::Identity> {
    let (user, exp) = token.split_once('.')?;
    if user.is_empty() {
        return None;
    }
    let who = salvo_realtime::Identity::new(user);
    if exp == "never" {
        return Some(who);
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(exp.parse().ok()?);
    Some(who.expires_at(at))
}

/// The client script, a socket at `/ws?token=..` and a stream at `/events?token=..&topic=..`
/// over `hub`, whose identities expire when their token says (an expired one is refused 401 at
/// the door); the socket's refresh check reads the same tokens and counts its runs in
/// `refreshes`.
fn expiring_router(hub: impl Hub + Clone, refreshes: Arc<AtomicUsize>) -> Router {
    use salvo_realtime::Rejection;
    let identify = |req: &salvo::Request, _: &salvo::Depot| {
        let token = req.query::<String>("token").unwrap_or_default();
        identity_of(&token)
            .map(Some)
            .ok_or_else(|| Rejection::unauthorized("bad token"))
    };
    let ws = salvo_realtime::ws::WsEndpoint::new(hub.clone())
        .identify(identify)
        .refresh(move |token, _current| {
            refreshes.fetch_add(1, Ordering::SeqCst);
            async move { identity_of(&token).ok_or_else(|| Rejection::unauthorized("bad token")) }
        });
    let events = salvo_realtime::sse::SseEndpoint::new(hub).identify(identify);
    Router::new()
        .push(Router::with_path("realtime.js").get(salvo_realtime::client::ClientScript))
        .push(Router::with_path("ws").goal(ws))
        .push(Router::with_path("events").get(events))
}

/// The page's `token(ms)`: a token of ann's expiring `ms` from now.
const TOKEN_FN: &str = "window.token = (ms) => 'ann.' + (Date.now() + ms);";

// With the `refresh` option the client renews its identity before the `session` notice's
// deadline, over the socket: a refused token is an `error` event and is tried once more, the
// good one keeps the socket, and its subscription, past the first expiry without a reconnect
// (the fixed URL's token has expired by then: a reconnect would be refused). The notice is
// the `session` event, never a `direct` message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refresh_keeps_the_socket_past_the_first_expiry() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(salvo_realtime::channel::Channels::new(rooms.clone()).allow("*"));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let router = expiring_router(spy.clone(), Arc::clone(&refreshes));
    let server = Running::start(any_port(), router).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    // 8 s: the refresh is due at half of it, its retry halfway to the end; seconds to spare.
    page.js(&format!(
        "{TOKEN_FN} window.log = []; window.got = []; window.tokens = 0; \
         window.rt = m.channels('/ws?token=' + token(8000), {{ minDelay: 50, maxDelay: 100, \
           refresh: async () => (++window.tokens === 1 ? 'nonsense' : token(60000)) }}); \
         rt.on('status', (s) => window.log.push(['status', s.state, s.code ?? null])); \
         rt.on('session', (s) => {{ window.log.push(['session']); \
           window.expiresIn = s.expiresIn; window.expiresAt = Date.now() + s.expiresIn; }}); \
         rt.on('direct', (msg) => window.log.push(['direct', msg.event])); \
         rt.on('error', (e) => window.log.push(['error', e.type, e.code, e.message.length > 0])); \
         rt.subscribe('room').on('message', (msg) => window.got.push(msg.data));"
    ))
    .await;
    let expires_in = page
        .wait_for("the session event", "return window.expiresIn")
        .await;
    let expires_in = expires_in.as_f64().expect("a number of ms");
    assert!(expires_in > 0.0 && expires_in <= 8000.0, "{expires_in}");
    wait_or_report(
        &page,
        "the refresh and its retry",
        "return window.tokens === 2 && window.log.some((e) => e[0] === 'error')",
        "return [window.tokens, window.log]",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while refreshes.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the retry reached the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the first expiry (with a second to spare), the socket is the one it opened.
    wait_or_report(
        &page,
        "the first expiry to pass",
        "return Date.now() > window.expiresAt + 1000",
        "return window.log",
    )
    .await;
    rooms
        .broadcast("room", Publication::new(json!({ "n": 1 }).to_string()))
        .await
        .unwrap();
    wait_or_report(
        &page,
        "a message after the first expiry",
        "return window.got.length === 1",
        "return [window.got, window.log]",
    )
    .await;
    assert_eq!(page.js("return window.got").await, json!([{ "n": 1 }]));
    assert_eq!(
        page.js("return window.log").await,
        json!([
            ["status", "open", null],
            ["session"],
            ["error", "error", "unauthorized", true],
        ]),
        "one socket, the refused token told, no `direct` session message"
    );
    assert_eq!(spy.joins(), 1, "never reconnected");
    assert_eq!(refreshes.load(Ordering::SeqCst), 2);
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// Without `refresh`: the `session` event says when the identity expires, the server closes the
// socket 4001 then, and the client reconnects to the URL its (async) URL function gives then:
// a fresh token (the first one would be refused 401), the subscription resumed. By hand,
// `refresh(token)` resolves to `{expiresIn}` (`null`: no longer expires) and rejects with the
// server's code, without an `error` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_refresh_hears_session_and_reconnects_after_4001_through_its_url_function() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(salvo_realtime::channel::Channels::new(rooms.clone()).allow("*"));
    let router = expiring_router(spy.clone(), Arc::new(AtomicUsize::new(0)));
    let server = Running::start(any_port(), router).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(&format!(
        "{TOKEN_FN} window.log = []; window.got = []; window.urls = []; \
         window.rt = m.channels(async () => {{ \
           const url = '/ws?token=' + token(window.urls.length === 0 ? 4000 : 600000); \
           window.urls.push(url); return url; }}, {{ minDelay: 50, maxDelay: 100 }}); \
         rt.on('status', (s) => window.log.push(['status', s.state, s.code ?? null])); \
         rt.on('session', (s) => window.log.push(['session', s.expiresIn])); \
         rt.on('direct', (msg) => window.log.push(['direct', msg.event])); \
         rt.on('error', (e) => window.log.push(['error', e.code])); \
         window.room = rt.subscribe('room'); \
         room.on('message', (msg) => window.got.push(msg.data));"
    ))
    .await;
    wait_or_report(
        &page,
        "the second socket's session",
        "return window.log.filter((e) => e[0] === 'session').length === 2",
        "return window.log",
    )
    .await;
    let log: Vec<Value> = serde_json::from_value(page.js("return window.log").await).unwrap();
    let shape: Vec<Value> = log
        .iter()
        .map(|e| match e[0].as_str() {
            Some("session") => json!("session"),
            _ => e.clone(),
        })
        .collect();
    assert_eq!(
        shape,
        [
            json!(["status", "open", null]),
            json!("session"),
            json!(["status", "reconnecting", 4001]),
            json!(["status", "connecting", null]),
            json!(["status", "open", null]),
            json!("session"),
        ],
        "{log:?}"
    );
    let first = log[1][1].as_f64().expect("ms");
    assert!(first > 0.0 && first <= 4000.0, "{log:?}");
    let second = log[5][1].as_f64().expect("ms");
    assert!(second > 4000.0 && second <= 600_000.0, "{log:?}");
    let urls: Vec<String> = serde_json::from_value(page.js("return window.urls").await).unwrap();
    assert_eq!(urls.len(), 2, "called on each connect");
    assert_ne!(urls[0], urls[1]);
    assert_eq!(spy.joins(), 2);
    page.wait_for(
        "the resubscription",
        "return window.room.state === 'subscribed' && window.rt.state === 'open'",
    )
    .await;
    rooms
        .broadcast("room", Publication::new(json!({ "n": 2 }).to_string()))
        .await
        .unwrap();
    page.wait_for(
        "a message on the new socket",
        "return window.got.length === 1",
    )
    .await;

    // By hand.
    page.js("const outcome = (p) => p.then((r) => ['ok', r], \
           (e) => ['refused', e instanceof m.RealtimeError, e.code]); \
         (async () => { window.manual = [ \
           await outcome(rt.refresh('bob.' + (Date.now() + 60000))), \
           await outcome(rt.refresh('nonsense')), \
           await outcome(rt.refresh(token(120000))), \
           await outcome(rt.refresh('ann.never')), \
         ]; })();")
        .await;
    let manual = page
        .wait_for("the manual refreshes", "return window.manual")
        .await;
    assert_eq!(manual[0], json!(["refused", true, "forbidden"]));
    assert_eq!(manual[1], json!(["refused", true, "unauthorized"]));
    assert_eq!(manual[2][0], json!("ok"), "{manual}");
    let renewed = manual[2][1]["expiresIn"].as_f64().expect("ms");
    assert!(renewed > 60_000.0 && renewed <= 120_000.0, "{manual}");
    assert_eq!(manual[3], json!(["ok", { "expiresIn": null }]));
    assert_eq!(
        page.js("return window.log.length").await,
        json!(6),
        "no `error` or `session` event for a refresh by hand"
    );
    page.js("window.rt.close()").await;
    page.quit().await;
    server.stop().await;
}

// An SSE stream ends when its identity expires; with a URL function the client reopens it
// itself, at once, with the URL the function gives then (never letting the browser retry the
// old one, refused 401), resuming from the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reopen_an_expired_stream_through_the_url_function() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let spy = Spy::new(salvo_realtime::channel::Channels::new(rooms.clone()).allow("*"));
    let router = expiring_router(spy.clone(), Arc::new(AtomicUsize::new(0)));
    let server = Running::start(any_port(), router).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(&format!(
        "{TOKEN_FN} window.log = []; window.got = []; window.urls = []; \
         window.feed = new m.RealtimeEvents(() => {{ \
           const url = '/events?topic=news&token=' + token(window.urls.length === 0 ? 4000 : 600000); \
           window.urls.push(url); return url; }}, {{ topic: 'news', minDelay: 50, maxDelay: 100 }}); \
         feed.on('status', (s) => window.log.push([s.state, s.browser ?? false])); \
         feed.on('message', (msg) => window.got.push(msg.data.n));"
    ))
    .await;
    wait_or_report(
        &page,
        "the stream",
        "return window.feed.state === 'open'",
        "return window.log",
    )
    .await;
    rooms
        .broadcast("news", Publication::new(json!({ "n": 1 }).to_string()))
        .await
        .unwrap();
    wait_or_report(
        &page,
        "the stream reopened",
        "return window.log.filter((e) => e[0] === 'open').length === 2",
        "return window.log",
    )
    .await;
    rooms
        .broadcast("news", Publication::new(json!({ "n": 2 }).to_string()))
        .await
        .unwrap();
    page.wait_for("both messages", "return window.got.length === 2")
        .await;
    assert_eq!(page.js("return window.got").await, json!([1, 2]));
    assert_eq!(
        page.js("return window.log").await,
        json!([
            ["open", false],
            ["reconnecting", false],
            ["connecting", false],
            ["open", false],
        ])
    );
    assert_eq!(page.js("return window.urls.length").await, json!(2));
    assert_eq!(spy.joins(), 2);
    page.js("window.feed.close()").await;
    page.quit().await;
    server.stop().await;
}

// `sendEvent(event, data)` sends `{"event":..,"data":..}`: through an endpoint with
// `event_frames(true)` an `on_event` handler takes it (`data` absent: `null`), its broadcast
// reaching another socket of the topic and its answer the sender; queued while connecting,
// like `send`. The URL may be a function; one that throws is asked again after a backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_send_event_reaches_an_on_event_handler_through_event_frames() {
    let _serial = SERIAL.lock().await;
    let rooms = Rooms::new();
    let ws = salvo_realtime::ws::WsEndpoint::new(routed_channels(rooms.clone()))
        .identify(|req, _| {
            Ok(req
                .query::<String>("name")
                .map(salvo_realtime::Identity::new))
        })
        .event_frames(true);
    let router = Router::new()
        .push(Router::with_path("realtime.js").get(salvo_realtime::client::ClientScript))
        .push(Router::with_path("ws").goal(ws));
    let server = Running::start(any_port(), router).await;
    let driver = Driver::start().await;
    let page = client_page(&driver, &server).await;
    page.js(
        "window.moved = []; window.replies = []; window.errors = []; window.urlCalls = 0; \
         window.b = new m.RealtimeSocket('/ws?name=bob&topic=game:1'); \
         b.on('message', (msg) => msg.event === 'moved' && window.moved.push([msg.data, msg.from])); \
         b.on('status', (s) => { if (s.state !== 'open' || window.a) return; \
           window.a = new m.RealtimeSocket(() => { \
             if (++window.urlCalls === 1) throw new Error('no token yet'); \
             return '/ws?name=ann&topic=game:1'; }, { minDelay: 50, maxDelay: 100 }); \
           a.on('reply', (r) => window.replies.push(r)); \
           a.on('error', (e) => window.errors.push(e.code)); \
           window.sent = [a.sendEvent('move', { dx: 2 }), a.sendEvent('move')]; });",
    )
    .await;
    wait_or_report(
        &page,
        "both moves",
        "return window.moved.length === 2 && window.replies.length === 2",
        "return [window.moved, window.replies, window.errors]",
    )
    .await;
    assert_eq!(page.js("return window.sent").await, json!([true, true]));
    assert_eq!(
        page.js("return window.moved").await,
        json!([[{ "x": 2 }, "ann"], [{ "x": 0 }, "ann"]])
    );
    assert_eq!(
        page.js("return window.replies").await,
        json!([
            { "topic": "game:1", "reply": { "x": 2 } },
            { "topic": "game:1", "reply": { "x": 0 } },
        ])
    );
    assert_eq!(page.js("return window.errors").await, json!([]));
    assert_eq!(
        page.js("return window.urlCalls").await,
        json!(2),
        "a URL function that throws is asked again after a backoff"
    );
    let last = rooms.history("game:1");
    let event = last.last().and_then(|m| m.event()).map(ToString::to_string);
    assert_eq!(event.as_deref(), Some("moved"));
    page.js("window.a.close(); window.b.close()").await;
    page.quit().await;
    server.stop().await;
}
