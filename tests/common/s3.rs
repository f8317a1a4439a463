//! A real S3-compatible server on loopback for the store's bucket tests: moto, from the
//! `.venv-s3` that scripts/setup.sh installs. Each [`Moto`] is its own server process (≈ 1 s to
//! start), killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A planted secret: tests grep every output and file for it.
pub const SECRET: &str = "pipe-test-SECRET-7f3a9c1e55d04b2b";

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Start moto on a free loopback port and wait until it answers.
    pub fn start() -> Moto {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-s3/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh (it installs moto, the S3 test server)",
            bin.display()
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto { child, port };
        let t0 = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && reqwest::blocking::get(m.endpoint()).is_ok()
            {
                return m;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto checks no signature, so a plain PUT does it) and return its URL
    /// with a prefix, as `store.path` takes it.
    pub fn bucket(&self, name: &str) -> String {
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        format!("s3://{name}/team")
    }

    /// The AWS_* settings that point a store at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "pipe-test-key".to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`FaultProxy`] does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and return the answer.
    Pass,
    /// Forward it (so it takes effect) and answer this status instead: a lost response.
    LoseAnswer(u16),
    /// Answer this status without forwarding: nothing happened.
    Refuse(u16),
}

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub fault: Fault,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Rule = dyn Fn(&Seen, &[Seen]) -> Fault + Send + Sync;

/// An HTTP proxy in front of moto that loses answers or refuses requests as a rule says: the
/// "unknown outcome" cases of a conditional write (a 5xx retried after the write landed, a 409
/// that wrote nothing), made on purpose. One request per connection.
pub struct FaultProxy {
    pub port: u16,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    /// `rule(request, earlier requests)` decides each request's fate.
    pub fn start(
        upstream: u16,
        rule: impl Fn(&Seen, &[Seen]) -> Fault + Send + Sync + 'static,
    ) -> FaultProxy {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rule: Arc<Rule> = Arc::new(rule);
        let s2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, rule) = (Arc::clone(&s2), Arc::clone(&rule));
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &seen, &*rule);
                });
            }
        });
        FaultProxy { port, seen }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP message: its first line, headers and body.
type Message = (String, Vec<(String, String)>, Vec<u8>);

/// Read an HTTP message head (through the blank line) and its body by Content-Length.
fn read_message(r: &mut impl std::io::BufRead, has_body: bool) -> std::io::Result<Option<Message>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; if has_body { len } else { 0 }];
    std::io::Read::read_exact(r, &mut body)?;
    Ok(Some((first.trim_end().to_string(), headers, body)))
}

fn write_message(
    w: &mut impl std::io::Write,
    first: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = format!("{first}\r\n");
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    w.write_all(out.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn serve(
    client: std::net::TcpStream,
    upstream: u16,
    seen: &std::sync::Mutex<Vec<Seen>>,
    rule: &Rule,
) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some((first, headers, body)) = read_message(&mut reader, true)? else {
        return Ok(());
    };
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut req = Seen {
        method: method.clone(),
        path,
        headers: headers.clone(),
        fault: Fault::Pass,
    };
    let fault = {
        let mut seen = seen.lock().unwrap();
        req.fault = rule(&req, &seen);
        seen.push(req.clone());
        req.fault
    };
    let reply = |client: &mut std::net::TcpStream, status: u16| {
        let body = format!(
            "<?xml version=\"1.0\"?><Error><Code>Injected</Code><Message>injected {status}</Message></Error>"
        );
        let h = vec![("Content-Length".to_string(), body.len().to_string())];
        write_message(
            client,
            &format!("HTTP/1.1 {status} Injected"),
            &h,
            body.as_bytes(),
        )
    };
    if let Fault::Refuse(status) = fault {
        return reply(&mut client, status);
    }
    let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
    write_message(&mut up, &first, &headers, &body)?;
    let mut ur = std::io::BufReader::new(up.try_clone()?);
    let (ufirst, uheaders, ubody) =
        read_message(&mut ur, method != "HEAD")?.expect("moto answered");
    match fault {
        Fault::LoseAnswer(status) => reply(&mut client, status),
        _ => write_message(&mut client, &ufirst, &uheaders, &ubody),
    }
}
