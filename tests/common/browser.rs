//! A headless Chromium driven through chromedriver's WebDriver API over plain HTTP, for
//! the pages the crate serves (the dashboard, the portal). Skipped (`None`) where
//! chromedriver is not installed, unless `TOWER_API_KEY_REQUIRE_SERVICES=1`.
#![allow(dead_code)] // each test crate uses part of it

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebDriver session on a chromedriver of its own; both end when dropped.
pub(crate) struct Browser {
    driver: Child,
    addr: String,
    session: String,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait for the page lasts before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×800, or `None` (skipped)
    /// where they are not installed and services are not required.
    pub(crate) async fn start() -> Option<Self> {
        let driver_bin = std::path::Path::new("/usr/bin/chromedriver");
        if !driver_bin.exists() {
            assert!(
                std::env::var("TOWER_API_KEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "chromedriver is missing and TOWER_API_KEY_REQUIRE_SERVICES=1 requires it"
            );
            eprintln!("skipped: /usr/bin/chromedriver is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile =
            std::env::temp_dir().join(format!("chromium-profile-{}-{port}", std::process::id()));
        let mut browser = Self {
            driver,
            addr: format!("127.0.0.1:{port}"),
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(&browser.addr).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", browser.profile.display()), "--window-size=1280,800",
            ]}
        }}});
        let created = browser.call("POST", "/session", Some(caps)).await;
        browser.session = created["sessionId"].as_str().expect("a session").to_owned();
        Some(browser)
    }

    /// One WebDriver command; its `value`. Fails the test on an error answer.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http_sized(&self.addr, method, path, &body).await;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 300, "{method} {path}: {status} {text}");
        v["value"].clone()
    }

    /// One command of this session (`path` after `/session/{id}`).
    pub(crate) async fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// Opens `url`.
    pub(crate) async fn open(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url})))
            .await;
    }

    /// The elements matching `css` now.
    pub(crate) async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .session(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    /// The first element matching `css`, waiting for it.
    pub(crate) async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Is the first element matching `css` displayed?
    pub(crate) async fn displayed(&self, css: &str) -> bool {
        let e = self.find(css).await;
        self.session("GET", &format!("/element/{e}/displayed"), None)
            .await
            .as_bool()
            .unwrap()
    }

    /// Waits until the text of the first element matching `css` satisfies `want`. The page
    /// re-renders as it loads, so a vanished (stale) element just means "not yet".
    pub(crate) async fn wait_text(
        &self,
        css: &str,
        want: impl Fn(&str) -> bool,
        what: &str,
    ) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                let path = format!("/session/{}/element/{e}/text", self.session);
                let (status, body) = http_sized(&self.addr, "GET", &path, "").await;
                if status == 200 {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    last = v["value"].as_str().unwrap_or_default().to_owned();
                    if want(&last) {
                        return last;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; {css} says {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the first element matching `css`.
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Clicks the first element matching `css`. Pages re-render lists as they load,
    /// so an element gone stale between finding and clicking is found again.
    pub(crate) async fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let e = self.find(css).await;
            let path = format!("/session/{}/element/{e}/click", self.session);
            let (status, body) = http_sized(&self.addr, "POST", &path, "{}").await;
            if status < 300 {
                return;
            }
            assert!(
                body.contains("stale element reference") && Instant::now() < deadline,
                "click {css}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clears the first element matching `css` (an input).
    pub(crate) async fn clear(&self, css: &str) {
        let e = self.find(css).await;
        self.session("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
    }

    /// Accepts the open `confirm()` dialog, waiting for it to open.
    pub(crate) async fn accept_dialog(&self) {
        let path = format!("/session/{}/alert/accept", self.session);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = http_sized(&self.addr, "POST", &path, "{}").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "no dialog opened: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the window's size.
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.session(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub(crate) async fn run(&self, script: &str) -> Value {
        self.exec(script, json!([])).await
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its result.
    pub(crate) async fn exec(&self, script: &str, args: Value) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `check` of the page's state (a script returning JSON) holds.
    pub(crate) async fn wait_for(
        &self,
        script: &str,
        check: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.run(script).await;
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {what}; the page says {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sizes the window so that the page's viewport is `width` × `height` (the
    /// window's frame takes some of the window's size).
    pub(crate) async fn viewport(&self, width: i64, height: i64) {
        let size = |w: i64, h: i64| json!({"width": w, "height": h});
        let inner = "return [window.innerWidth, window.innerHeight];";
        self.session("POST", "/window/rect", Some(size(width, height)))
            .await;
        let got = self.run(inner).await;
        let (w, h) = (got[0].as_i64().unwrap(), got[1].as_i64().unwrap());
        self.session(
            "POST",
            "/window/rect",
            Some(size(2 * width - w, 2 * height - h)),
        )
        .await;
        assert_eq!(
            self.run(inner).await,
            json!([width, height]),
            "the viewport"
        );
    }

    /// Scrolls the page so that `css` is at the top (`None`: the page's top), and waits
    /// until it is painted so (two animation frames).
    pub(crate) async fn scroll_to(&self, css: Option<&str>) {
        self.session(
            "POST",
            "/execute/async",
            Some(json!({
                "script": "const done = arguments[arguments.length - 1];
                    const e = arguments[0] && document.querySelector(arguments[0]);
                    if (e) e.scrollIntoView({block: 'start'}); else window.scrollTo(0, 0);
                    requestAnimationFrame(() => requestAnimationFrame(() => done(null)));",
                "args": [css],
            })),
        )
        .await;
    }

    /// The page's width as laid out, and the viewport's: a page wider than its viewport
    /// scrolls sideways.
    pub(crate) async fn widths(&self) -> (u64, u64) {
        let v = self
            .run("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    }

    /// Saves a screenshot as `name` in the directory `TOWER_API_KEY_SCREENSHOTS` names
    /// (by default target/screenshots); returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let b64 = self.session("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::env::var_os("TOWER_API_KEY_SCREENSHOTS").map_or_else(
            || {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join("screenshots")
            },
            std::path::PathBuf::from,
        );
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session.
    pub(crate) async fn quit(self) {
        self.session("DELETE", "", None).await;
    }
}

/// One HTTP/1.1 JSON request that reads exactly `Content-Length` bytes of answer
/// (chromedriver keeps connections open).
async fn http_sized(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the answer was complete");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if raw.len() >= end + 4 + len {
            let status = head[9..12].parse().unwrap();
            return (
                status,
                String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned(),
            );
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
