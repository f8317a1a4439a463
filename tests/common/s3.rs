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
