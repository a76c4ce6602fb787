//! `examples/loadtest_server` answers in each mode what the load runs assume it does: the
//! floor sends the same `RateLimit-Policy` as our layers and refuses a wrong key, and each
//! `floor-no…` part leaves out what it says (so `e2e.sh` prices what it names).
#![cfg(all(feature = "axum", feature = "redis"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn binary() -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    path.pop();
    path.push("examples");
    path.push("loadtest_server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --features full --example loadtest_server`",
        path.display()
    );
    path
}

/// A running `loadtest_server`, killed when dropped.
struct Loadtest {
    child: Child,
    addr: String,
    key: String,
}

impl Drop for Loadtest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mode: &str) -> Loadtest {
    let mut child = Command::new(binary())
        .env("MODE", mode)
        .env("BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let (mut key, mut addr) = (None, None);
    while key.is_none() || addr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("MODE={mode}: no key and address printed: {e}"));
        if let Some(k) = line.strip_prefix("key: ") {
            key = Some(k.to_owned());
        } else if let Some(a) = line.strip_prefix("listening on http://") {
            addr = Some(a.to_owned());
        }
    }
    Loadtest {
        child,
        addr: addr.unwrap(),
        key: key.unwrap(),
    }
}

/// The status and the header lines (names lowercased) of `GET /` with this bearer token.
fn get(addr: &str, token: &str) -> (u16, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: loadtest\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let head = answer.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_floor_answers_as_our_layers_do() {
    let ours = start("auth-outer");
    let (status, ours_headers) = get(&ours.addr, &ours.key);
    assert_eq!(status, 200);
    let floor = start("floor");
    let (status, headers) = get(&floor.addr, &floor.key);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        header(&ours_headers, "ratelimit-policy")
    );
    assert!(header(&headers, "ratelimit-policy").is_some());
    let field = header(&headers, "ratelimit").expect("a RateLimit field");
    assert!(
        field.starts_with("\"load\";r=") && field.ends_with(";t=1"),
        "{field}"
    );

    // A key of the right form that is not the floor's, and one that fails the checksum.
    let other = tower_api_key::KeyFormat::default().generate();
    assert_eq!(get(&floor.addr, other.expose_secret()).0, 401);
    let mut broken = floor.key.clone();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(get(&floor.addr, &broken).0, 401);
    assert_eq!(get(&floor.addr, "").0, 401);
}

#[test]
fn each_floor_part_leaves_out_what_it_names() {
    let other = tower_api_key::KeyFormat::default().generate();
    let other = other.expose_secret();

    let nohdr = start("floor-nohdr");
    let (status, headers) = get(&nohdr.addr, &nohdr.key);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "ratelimit-policy"), None);
    assert_eq!(header(&headers, "ratelimit"), None);

    // Still hashing: a wrong key of the right form is refused without the checksum check.
    let nocrc = start("floor-nocrc");
    assert_eq!(get(&nocrc.addr, &nocrc.key).0, 200);
    assert_eq!(get(&nocrc.addr, other).0, 401);

    // Not hashing: the one key's entry is found for any well-formed token.
    let nosha = start("floor-nosha");
    assert_eq!(get(&nosha.addr, other).0, 200);
    assert_eq!(get(&nosha.addr, "not-a-key").0, 401);

    let nogcra = start("floor-nogcra-noext");
    let (status, headers) = get(&nogcra.addr, &nogcra.key);
    assert_eq!(status, 200);
    assert!(header(&headers, "ratelimit").is_some());

    let none = start("floor-nosha-nocrc-nogcra-noext-nohdr");
    let (status, headers) = get(&none.addr, "anything");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "ratelimit"), None);
}

#[test]
fn an_unknown_mode_is_refused() {
    for mode in ["floor-nothing", "floorish", "nosuchmode"] {
        let out = Command::new(binary())
            .env("MODE", mode)
            .env("BIND", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!out.status.success(), "MODE={mode} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("MODE must be"), "MODE={mode}: {stderr}");
    }
}
