//! A store in an object-store bucket (`s3://bucket/prefix`: AWS S3 and S3-compatible
//! services), through the `object_store` crate.
//!
//! The three write conditions map to S3's own: create-if-absent is `If-None-Match: *`, compare
//! and swap is `If-Match: <etag>`. What S3 leaves open is the *outcome* of a conditional write
//! whose answer was lost: a 5xx retried after the write landed comes back 412 (or 409, which
//! AWS also sends when nothing was written), and a timeout says nothing at all. Every such case
//! is resolved here by reading the key back: our own bytes there mean we wrote, other bytes
//! mean another writer did, nothing there means try again. Never by guessing. (Our bytes are
//! unique: records and leases carry their writer's host, pid and clock.)
//!
//! Credentials come only from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_PROFILE`-less web identity or instance metadata, as
//! `object_store` reads them) and are never written anywhere: every error message is scrubbed
//! of the secret values before it leaves this module.

use super::super::StoreError;
use super::{Backend, Blob, Cond, Meta, Put, Requests, Version};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values at most this large are sent in one PUT (and refreshed by rewriting them); larger
/// ones go up in parts of this size.
const PART: usize = 16 << 20;

/// How often an ambiguous conditional write is retried after reading back found nothing.
const RESOLVE_ATTEMPTS: usize = 5;

/// A bucket backend.
pub struct Bucket {
    url: String,
    prefix: String,
    s3: AmazonS3,
    rt: tokio::runtime::Runtime,
    staging: PathBuf,
    host: String,
    secrets: Vec<String>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    copy: AtomicU64,
}

/// Every bucket's requests in this process (what `PIPE_REQUEST_LOG` writes at exit).
static PROCESS: Counts = Counts {
    put: AtomicU64::new(0),
    get: AtomicU64::new(0),
    head: AtomicU64::new(0),
    list: AtomicU64::new(0),
    delete: AtomicU64::new(0),
    copy: AtomicU64::new(0),
};

impl Counts {
    fn snapshot(&self) -> Requests {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Requests {
            put: l(&self.put),
            get: l(&self.get),
            head: l(&self.head),
            list: l(&self.list),
            delete: l(&self.delete),
            copy: l(&self.copy),
        }
    }
}

/// The requests every bucket of this process has made so far.
pub fn process_requests() -> Requests {
    PROCESS.snapshot()
}

/// Count `n` requests of one kind, for this bucket and for the process.
fn bump(kind: fn(&Counts) -> &AtomicU64, mine: &Counts, n: u64) {
    kind(mine).fetch_add(n, Ordering::Relaxed);
    kind(&PROCESS).fetch_add(n, Ordering::Relaxed);
}

/// This user's staging directory in the system's temp directory: created 0700, and refused
/// when someone else owns it or can read it (staged uploads would be theirs to read or swap).
fn private_staging() -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("pipe-staging-{uid}"));
    let io = |source| StoreError::Io {
        path: dir.clone(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let m = std::fs::symlink_metadata(&dir).map_err(io)?;
    if !m.is_dir() || m.uid() != uid {
        return Err(io(std::io::Error::other(
            "the bucket's staging directory is not this user's own; remove it or set TMPDIR \
             elsewhere",
        )));
    }
    if m.mode() & 0o077 != 0 {
        // Ours, but open to others (made by an older pipe, or by hand): close it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(dir)
}

/// The variables that choose a shared profile (not settings of the S3 client themselves).
const PROFILE_VARS: [&str; 3] = [
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];

/// A shared profile's settings, as the AWS CLI reads them: `[NAME]` of the credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) and `[profile NAME]` (or
/// `[default]`) of the config file (`AWS_CONFIG_FILE`, default `~/.aws/config`), `NAME` being
/// `AWS_PROFILE` or `default`. Keys, token, region and endpoint, named as their variables.
/// A profile asked for by name that neither file has is an error; the default one may be absent.
fn profile_settings(
    given: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, String> {
    let named = given("AWS_PROFILE");
    let name = named.clone().unwrap_or_else(|| "default".to_string());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        given(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut found = false;
    let sources = [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            name.clone(),
        ),
        (
            file("AWS_CONFIG_FILE", "config"),
            if name == "default" {
                name.clone()
            } else {
                format!("profile {name}")
            },
        ),
    ];
    for (path, section) in sources {
        let Some(path) = path.filter(|p| p.exists()) else {
            continue;
        };
        let ini = ini::Ini::load_from_file(&path)
            .map_err(|e| format!("reading the AWS profile file {}: {e}", path.display()))?;
        let Some(props) = ini.section(Some(section.as_str())) else {
            continue;
        };
        found = true;
        for (key, var) in [
            ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            ("aws_session_token", "AWS_SESSION_TOKEN"),
            ("region", "AWS_REGION"),
            ("endpoint_url", "AWS_ENDPOINT_URL"),
        ] {
            if let Some(v) = props.get(key)
                && !out.iter().any(|(k, _)| *k == var)
            {
                out.push((var, v.trim().to_string()));
            }
        }
    }
    if named.is_some() && !found {
        return Err(format!(
            "AWS_PROFILE names profile {name:?}, which neither the credentials nor the config \
             file has"
        ));
    }
    Ok(out)
}

impl Bucket {
    /// Open `url` (`s3://bucket` or `s3://bucket/prefix`). The endpoint, region and
    /// credentials come from the usual `AWS_*` variables, or from a shared profile
    /// (`AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`) for what the variables leave
    /// out; an `http://` endpoint (a server on loopback or in the cluster) is allowed without
    /// setting `AWS_ALLOW_HTTP` as well.
    pub fn open(url: &str, host: String, aws: &[(String, String)]) -> Result<Bucket, StoreError> {
        let bad = |what: String| StoreError::Remote {
            location: url.to_string(),
            op: "open",
            message: what,
        };
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad(
                "only s3:// URLs are supported (S3 and S3-compatible services: MinIO, R2, Ceph, \
                 GCS's interoperability endpoint); a shared directory is a plain path"
                    .into(),
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the URL names no bucket".into()));
        }
        // The environment, then the caller's settings over it, then a shared profile's for
        // what neither gives.
        let given = |name: &str| {
            aws.iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        };
        let profile = profile_settings(&given).map_err(bad)?;
        let var = |name: &str| {
            given(name).or_else(|| {
                profile
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let mut b = AmazonS3Builder::from_env();
        let settings = profile
            .iter()
            .filter(|(k, _)| given(k).is_none())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(aws.iter().cloned());
        for (k, v) in settings {
            if PROFILE_VARS.iter().any(|p| k.eq_ignore_ascii_case(p)) {
                continue;
            }
            let key = k
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| bad(format!("{k} is not a setting of the S3 client")))?;
            b = b.with_config(key, v);
        }
        let mut b = b.with_bucket_name(bucket).with_retry(RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        });
        let endpoint = var("AWS_ENDPOINT_URL")
            .or_else(|| var("AWS_ENDPOINT"))
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        let secrets: Vec<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
            .iter()
            .filter_map(|v| var(v))
            .filter(|s| s.len() >= 4)
            .collect();
        let scrub = |m: String| {
            secrets
                .iter()
                .fold(m, |m, s: &String| m.replace(s.as_str(), "[secret]"))
        };
        let s3 = b.build().map_err(|e| bad(scrub(e.to_string())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pipe-bucket")
            .enable_all()
            .build()
            .map_err(|e| bad(e.to_string()))?;
        // Temp files of uploads and downloads: one directory per user, reaped like a directory
        // store's tmp-v1 (the names carry host, pid and start time).
        let staging = private_staging()?;
        let prefix = prefix.trim_matches('/');
        Ok(Bucket {
            url: url.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            s3,
            rt,
            staging,
            host,
            secrets,
            counts: Counts::default(),
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{key}", self.prefix))
    }

    /// An error for `op` on `key`, with any secret blanked out.
    fn err(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        let mut message = e.to_string();
        if message.contains("NoSuchBucket") {
            message = format!(
                "the bucket does not exist: create it first (`aws s3 mb s3://{}`), or check \
                 the URL and AWS_ENDPOINT_URL. The server said: {message}",
                self.url
                    .trim_start_matches("s3://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
            );
        }
        for s in &self.secrets {
            message = message.replace(s.as_str(), "[secret]");
        }
        StoreError::Remote {
            location: format!("{}/{key}", self.url),
            op,
            message,
        }
    }

    fn version(&self, key: &str, e_tag: Option<String>) -> Result<Version, StoreError> {
        e_tag
            .map(Version)
            .ok_or_else(|| self.err("read", key, "the server gave no ETag"))
    }

    /// Write once with `mode`; `Ok(None)` when the outcome is unknown or the condition failed,
    /// which the caller resolves by reading back.
    /// Write once with `mode`. `Ok(Err(why))` when the condition failed or the outcome is
    /// unknown: a conditional caller resolves it by reading back, an unconditional one reports
    /// `why`.
    fn put_once(
        &self,
        key: &str,
        bytes: &[u8],
        mode: PutMode,
    ) -> Result<Result<Version, String>, StoreError> {
        bump(|c| &c.put, &self.counts, 1);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        crate::failpoint("bucket:sending");
        match self
            .rt
            .block_on(self.s3.put_opts(&self.path(key), payload, opts))
        {
            Ok(r) => {
                crate::failpoint("bucket:written");
                Ok(Ok(self.version(key, r.e_tag)?))
            }
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. }),
            ) => Ok(Err(e.to_string())),
            Err(e @ object_store::Error::Generic { .. }) => {
                // A timeout or a connection lost after sending: nobody knows whether it landed.
                tracing::debug!("bucket put {key}: {e}; reading back");
                Ok(Err(e.to_string()))
            }
            Err(e) => Err(self.err("write", key, e)),
        }
    }

    fn get_inner(&self, key: &str) -> Result<Option<Blob>, StoreError> {
        bump(|c| &c.get, &self.counts, 1);
        let path = self.path(key);
        let got = self.rt.block_on(async {
            let r = self.s3.get(&path).await?;
            let e_tag = r.meta.e_tag.clone();
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((bytes, e_tag))
        });
        match got {
            Ok((bytes, e_tag)) => Ok(Some(Blob {
                bytes: bytes.to_vec(),
                version: self.version(key, e_tag)?,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", key, e)),
        }
    }

    fn meta(&self, m: object_store::ObjectMeta) -> Option<Meta> {
        let full = m.location.as_ref();
        let key = full.strip_prefix(self.prefix.as_str())?.to_string();
        Some(Meta {
            key,
            size: m.size,
            modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
            version: Version(m.e_tag.unwrap_or_default()),
        })
    }
}

impl Backend for Bucket {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn get(&self, key: &str) -> Result<Option<Blob>, StoreError> {
        self.get_inner(key)
    }

    fn open(&self, key: &str) -> Result<Option<File>, StoreError> {
        bump(|c| &c.get, &self.counts, 1);
        let path = self.path(key);
        let io = |source| StoreError::Io {
            path: self.staging.clone(),
            source,
        };
        // Unnamed: it disappears with the handle, whatever happens to this process.
        let mut file = tempfile::tempfile_in(&self.staging).map_err(io)?;
        let res = self.rt.block_on(async {
            let r = self.s3.get(&path).await?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk)
                    .map_err(|e| object_store::Error::Generic {
                        store: "local",
                        source: Box::new(e),
                    })?;
            }
            Ok::<_, object_store::Error>(())
        });
        match res {
            Ok(()) => {
                file.rewind().map_err(io)?;
                Ok(Some(file))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", key, e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        bump(|c| &c.head, &self.counts, 1);
        match self.rt.block_on(self.s3.head(&self.path(key))) {
            Ok(m) => Ok(self.meta(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", key, e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> Result<Put, StoreError> {
        match cond {
            Cond::Overwrite => match self.put_once(key, bytes, PutMode::Overwrite)? {
                Ok(v) => Ok(Put::Written(v)),
                // Unconditional and idempotent: object_store has retried what it could.
                Err(why) => Err(self.err("write", key, why)),
            },
            Cond::IfAbsent => {
                for _ in 0..RESOLVE_ATTEMPTS {
                    if let Ok(v) = self.put_once(key, bytes, PutMode::Create)? {
                        return Ok(Put::Written(v));
                    }
                    match self.get_inner(key)? {
                        Some(b) if b.bytes == bytes => return Ok(Put::Written(b.version)),
                        Some(_) => return Ok(Put::Exists),
                        // A 409 that wrote nothing, or a lost write: try again.
                        None => continue,
                    }
                }
                Err(self.err("create", key, "the create kept failing without a winner"))
            }
            Cond::IfMatch(v) => {
                let mode = PutMode::Update(UpdateVersion {
                    e_tag: Some(v.0.clone()),
                    version: None,
                });
                if let Ok(v) = self.put_once(key, bytes, mode)? {
                    return Ok(Put::Written(v));
                }
                match self.get_inner(key)? {
                    Some(b) if b.bytes == bytes => Ok(Put::Written(b.version)),
                    _ => Ok(Put::Mismatch),
                }
            }
        }
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: file.to_path_buf(),
            source,
        };
        let res = (|| {
            let mut f = File::open(file).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            if len as usize <= PART {
                let mut bytes = Vec::with_capacity(len as usize);
                f.read_to_end(&mut bytes).map_err(io)?;
                return self.put(key, &bytes, Cond::Overwrite).map(|_| ());
            }
            // Multipart uploads cannot be conditional; fine for content-addressed values,
            // whose name fixes their bytes. An upload that fails midway is aborted.
            let path = self.path(key);
            self.rt
                .block_on(async {
                    let upload = self.s3.put_multipart(&path).await?;
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
                    let mut buf = vec![0u8; PART];
                    let sent: Result<(), object_store::Error> = async {
                        loop {
                            let n = f.read(&mut buf).map_err(|e| object_store::Error::Generic {
                                store: "local",
                                source: Box::new(e),
                            })?;
                            if n == 0 {
                                return Ok(());
                            }
                            bump(|c| &c.put, &self.counts, 1);
                            w.wait_for_capacity(2).await?;
                            w.write(&buf[..n]);
                        }
                    }
                    .await;
                    match sent {
                        Ok(()) => w.finish().await.map(|_| ()),
                        Err(e) => {
                            // Parts already uploaded are kept (and billed) until aborted.
                            let _ = w.abort().await;
                            Err(e)
                        }
                    }
                })
                .map_err(|e| self.err("upload", key, e))
        })();
        let _ = std::fs::remove_file(file);
        res
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        bump(|c| &c.delete, &self.counts, 1);
        // S3 answers a delete of a missing key with success too: it cannot tell.
        match self.rt.block_on(self.s3.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Meta>, StoreError> {
        let p = self.path(prefix.trim_end_matches('/'));
        let metas: Vec<_> = self
            .rt
            .block_on(async {
                let mut s = self.s3.list(Some(&p));
                let mut out = Vec::new();
                while let Some(m) = s.next().await {
                    out.push(m?);
                }
                Ok::<_, object_store::Error>(out)
            })
            .map_err(|e| self.err("list", prefix, e))?;
        // ListObjectsV2 answers at most 1,000 keys a page.
        let pages = (metas.len() as u64).div_ceil(1000).max(1);
        bump(|c| &c.list, &self.counts, pages);
        Ok(metas.into_iter().filter_map(|m| self.meta(m)).collect())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        bump(|c| &c.copy, &self.counts, 1);
        self.rt
            .block_on(self.s3.copy(&self.path(from), &self.path(to)))
            .map_err(|e| self.err("copy", from, e))?;
        self.delete(from).map(|_| ())
    }

    fn touch(&self, key: &str) {
        // S3 has no "set modified": rewrite the same bytes, only over the version just read,
        // so that a value gc removed meanwhile is not re-created. A large value is not
        // rewritten (a gc racing its reuse makes the commit that names it fail its re-check,
        // and the action is computed again).
        let Ok(Some(m)) = self.head(key) else { return };
        if m.size as usize > PART {
            return;
        }
        if let Ok(Some(b)) = self.get_inner(key) {
            let _ = self.put(key, &b.bytes, Cond::IfMatch(b.version));
        }
    }

    fn staging(&self) -> &Path {
        &self.staging
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    fn reap(&self) -> usize {
        super::super::atomic::reap_tmp(&self.staging, &self.host)
    }

    fn requests(&self) -> Requests {
        self.counts.snapshot()
    }

    fn io_parallelism(&self) -> usize {
        16
    }
}
