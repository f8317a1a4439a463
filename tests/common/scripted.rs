//! A scripted OpenAI-compatible server for tests: the test decides each reply from the request
//! (and how many came before), including the broken ones — hangs, truncated JSON, 429s.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The body's length and sha256 (`sha256:<hex>`), whatever it held.
    pub len: usize,
    pub sha256: String,
    /// 0-based arrival number among all requests.
    pub n: usize,
    /// The `Authorization` header, if any.
    pub auth: Option<String>,
}

impl Request {
    /// The user turn of a chat request.
    pub fn user(&self) -> &str {
        self.body["messages"][1]["content"].as_str().unwrap_or("")
    }
    /// Is this the tests step's prompt (else the implementation's)?
    pub fn is_tests_step(&self) -> bool {
        self.user().starts_with("Write pytest tests")
    }
    pub fn is_chat(&self) -> bool {
        self.path.ends_with("/chat/completions")
    }
}

/// What to answer.
pub enum Reply {
    /// A chat completion whose message content is this text.
    Content(String),
    /// A JSON body with a status and extra headers.
    Json(u16, Value, Vec<(String, String)>),
    /// These bytes as a 200 body (e.g. truncated JSON).
    Raw(Vec<u8>),
    /// Say nothing for this long, then close.
    Hang(Duration),
    /// A chat completion with this content, after this long.
    Slow(Duration, String),
    /// A valid completion whose content is `bytes` bytes of code, streamed; with
    /// `announce`, its `Content-Length` is sent, else the body just ends at close.
    Huge { bytes: usize, announce: bool },
    /// A 200 whose body never ends (until the client hangs up).
    Endless,
}

/// Tests for the `stack` task that a correct implementation passes.
pub const TESTS: &str = r#"import pytest
from implementation import Stack


def test_push_pop():
    s = Stack()
    s.push(1)
    s.push(2)
    assert s.pop() == 2
    assert s.pop() == 1


def test_empty():
    s = Stack()
    assert s.is_empty()
    with pytest.raises(IndexError):
        s.pop()
    with pytest.raises(IndexError):
        s.peek()


def test_size_and_none():
    s = Stack()
    s.push(None)
    assert s.size() == 1
    assert s.peek() is None
"#;

/// A correct `Stack`.
pub const IMPL: &str = r#"class Stack:
    def __init__(self):
        self._items = []

    def push(self, item):
        self._items.append(item)

    def pop(self):
        if not self._items:
            raise IndexError("pop from empty stack")
        return self._items.pop()

    def peek(self):
        if not self._items:
            raise IndexError("peek at empty stack")
        return self._items[-1]

    def is_empty(self):
        return not self._items

    def size(self):
        return len(self._items)
"#;

/// The implementation with a LIFO bug: pop takes from the bottom.
/// A reply with `code` in a python block, between some chatter.
pub fn py(code: &str) -> String {
    format!("Here you go:\n\n```python\n{code}```\n\nThis covers the spec.")
}

/// 404.
pub fn not_found() -> Reply {
    Reply::Json(404, json!({"error": "not found"}), vec![])
}

pub fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    })
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (l2, s2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, l) = (Arc::clone(&handler), Arc::clone(&l2));
                std::thread::spawn(move || serve(conn, &*h, &l));
            }
        });
        Server { url, log, stop }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    pub fn chats(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_chat())
            .collect()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut len = 0usize;
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = {
        let mut log = log.lock().unwrap();
        let req = Request {
            method,
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            len: body.len(),
            sha256: {
                use sha2::Digest;
                format!("sha256:{:x}", sha2::Sha256::digest(&body))
            },
            n: log.len(),
            auth,
        };
        log.push(req.clone());
        req
    };
    let mut conn = conn;
    let (status, body, headers) = match handler(&req) {
        Reply::Content(c) => (200, serde_json::to_vec(&completion(&c)).unwrap(), vec![]),
        Reply::Json(s, v, h) => (s, serde_json::to_vec(&v).unwrap(), h),
        Reply::Raw(b) => (200, b, vec![]),
        Reply::Slow(d, c) => {
            std::thread::sleep(d);
            (200, serde_json::to_vec(&completion(&c)).unwrap(), vec![])
        }
        Reply::Hang(d) => {
            std::thread::sleep(d);
            return;
        }
        Reply::Huge { bytes, announce } => {
            let full = serde_json::to_string(&completion("@@")).unwrap();
            let (pre, post) = full.split_once("@@").unwrap();
            let len = if announce {
                format!("Content-Length: {}\r\n", pre.len() + bytes + post.len())
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{len}Connection: close\r\n\r\n"
            );
            let line = "x = 1  # filler filler filler filler filler filler filler filler\\n";
            let chunk = line.repeat(64 * 1024 / line.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(pre.as_bytes());
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                if conn.write_all(&chunk.as_bytes()[..n]).is_err() {
                    return;
                }
                left -= n;
            }
            let _ = conn.write_all(post.as_bytes());
            return;
        }
        Reply::Endless => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"choices\": [{\"message\": {\"content\": \"";
            let _ = conn.write_all(head.as_bytes());
            let chunk = "a".repeat(64 * 1024);
            while conn.write_all(chunk.as_bytes()).is_ok() {}
            return;
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
    let _ = conn.flush();
}
