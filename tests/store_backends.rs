//! The store's promises, one suite run against both backends: a directory and a real
//! S3-compatible server (moto on loopback). Every test here is generated twice, as
//! `dir::<name>` and `bucket::<name>`, from one body that sees only `pipe::store::Store`.

mod common;
use common::s3::Moto;
use pipe::key::Hash;
use pipe::store::backend::{Cond, Location, Put};
use pipe::store::lease::{LeaseInfo, now_ms};
use pipe::store::{
    Acquire, ActionRecord, Committed, Manifest, ManifestEntry, Ref, SetRef, Store, StoreError,
    StoreOptions,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Where a test's stores live: a temp directory, or a fresh bucket on its own moto.
enum Place {
    Dir(tempfile::TempDir),
    Bucket(Arc<Moto>, String),
}

impl Place {
    fn dir() -> Place {
        Place::Dir(tempfile::tempdir().unwrap())
    }
    fn bucket() -> Place {
        let m = Arc::new(Moto::start());
        let url = m.bucket("suite");
        Place::Bucket(m, url)
    }
    /// A handle on the store (several handles = several workers sharing it).
    fn open(&self, ttl: Duration) -> Store {
        let (at, aws) = match self {
            Place::Dir(d) => (Location::Dir(d.path().join("s")), vec![]),
            Place::Bucket(m, url) => (Location::Bucket(url.clone()), m.env()),
        };
        let opts = StoreOptions {
            lease_ttl: ttl,
            aws,
            ..Default::default()
        };
        Store::open_at(&at, opts).unwrap()
    }
    fn is_bucket(&self) -> bool {
        matches!(self, Place::Bucket(..))
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod dir {
            $(#[test] fn $name() { super::$name(super::Place::dir()) })*
        }
        mod bucket {
            $(#[test] fn $name() { super::$name(super::Place::bucket()) })*
        }
    };
}

both!(
    objects_round_trip_and_corruption_is_caught_on_read,
    a_large_object_streams_in_and_out,
    first_record_writer_wins_and_a_lease_is_exclusive,
    a_commit_refuses_missing_outputs,
    a_dead_holder_on_this_host_is_taken_over_at_once,
    a_foreign_live_lease_blocks_until_it_expires,
    a_renewed_lease_cannot_be_taken_with_its_old_version,
    racing_workers_commit_each_key_exactly_once,
    a_ref_is_written_once_by_workers_that_finish_together,
    verify_quarantines_corruption_and_drops_what_it_broke,
    gc_keeps_what_refs_reach_fresh_values_and_live_leases,
    status_reads_leases_and_records_in_listings,
);

const TTL: Duration = Duration::from_secs(30);

fn record(store: &Store, key: Hash, out: Hash, finished_ms: u64) -> ActionRecord {
    ActionRecord {
        key,
        stage: "t".into(),
        item: "i".into(),
        common: out,
        ingredients: Value::Null,
        outputs: [("o".to_string(), out)].into(),
        summary: Value::Null,
        producer: store.producer(),
        started_ms: 1,
        finished_ms,
    }
}

fn held<'s>(a: Acquire<'s>) -> pipe::store::Lease<'s> {
    match a {
        Acquire::Held(l) => l,
        Acquire::Busy(i) => panic!("expected the lease, {} holds it", i.holder()),
    }
}

/// A one-item build of stage `stage`: object, record, manifest, ref.
fn build_one(store: &Store, stage: &str, content: &[u8]) -> (Ref, Hash) {
    let out = store.put(content).unwrap();
    let key = Hash::of(&[stage.as_bytes(), content].concat());
    let mut rec = record(store, key, out, 2);
    rec.stage = stage.into();
    held(store.try_lease(&key).unwrap()).commit(&rec).unwrap();
    let m = Manifest {
        entries: vec![ManifestEntry {
            id: "i".into(),
            key,
            outputs: rec.outputs.clone(),
            summary: Value::Null,
        }],
    };
    let manifest = store.put(&m.encode()).unwrap();
    let r = Ref {
        stage: stage.into(),
        stage_key: key,
        common: out,
        manifest,
        output: m.output_hash(),
        items: 1,
        built_ms: now_ms(),
        producer: store.producer(),
    };
    store.set_ref(&r).unwrap();
    (r, key)
}

fn objects_round_trip_and_corruption_is_caught_on_read(p: Place) {
    let s = p.open(TTL);
    let id = s.put(b"hello").unwrap();
    assert_eq!(s.get(&id).unwrap(), b"hello");
    assert_eq!(s.put(b"hello").unwrap(), id, "content-addressed");
    assert!(s.has_object(&id));
    // Damage it behind the store's back.
    let key = Store::object_key(&id);
    s.backend().put(&key, b"hellp", Cond::Overwrite).unwrap();
    assert!(matches!(s.get(&id), Err(StoreError::CorruptObject { .. })));
    assert!(matches!(
        s.object_file(&id),
        Err(StoreError::CorruptObject { .. })
    ));
    let missing = Hash::of(b"never");
    assert!(matches!(s.get(&missing), Err(StoreError::MissingObject(_))));
}

fn a_large_object_streams_in_and_out(p: Place) {
    let s = p.open(TTL);
    // Above the bucket's one-PUT size: it goes up in parts and comes back as a file.
    let n = 40 << 20;
    let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + i / 4096) as u8).collect();
    let (id, ()) = s
        .put_stream(|w| {
            w.write_all(&bytes).map_err(|e| StoreError::Io {
                path: "stream".into(),
                source: e,
            })
        })
        .unwrap();
    assert_eq!(id, Hash::of(&bytes));
    let f = s.object_file(&id).unwrap();
    assert_eq!(std::fs::metadata(f.path()).unwrap().len(), n as u64);
    let out = tempfile::tempdir().unwrap();
    let copied = s.export_object(&out.path().join("m.bin"), &id).unwrap();
    assert_eq!(copied, n as u64);
    assert_eq!(std::fs::read(out.path().join("m.bin")).unwrap(), bytes);
    // A failing writer leaves nothing behind.
    let r: Result<(Hash, ()), StoreError> = s.put_stream(|w| {
        w.write_all(b"partial").unwrap();
        Err(StoreError::Corrupt {
            what: "writer failed".into(),
        })
    });
    assert!(r.is_err());
    assert!(!s.has_object(&Hash::of(b"partial")));
}

fn first_record_writer_wins_and_a_lease_is_exclusive(p: Place) {
    let s = p.open(TTL);
    let key = Hash::of(b"k");
    let lease = held(s.try_lease(&key).unwrap());
    let Acquire::Busy(info) = s.try_lease(&key).unwrap() else {
        panic!("a held key must be busy")
    };
    assert_eq!(info.pid, std::process::id());
    let out = s.put(b"out").unwrap();
    let rec = record(&s, key, out, 2);
    assert_eq!(lease.commit(&rec).unwrap(), Committed::Written);
    // The commit released the lease.
    let again = held(s.try_lease(&key).unwrap());
    let mut other = rec.clone();
    other.finished_ms = 99;
    assert_eq!(again.commit(&other).unwrap(), Committed::AlreadyPresent);
    assert_eq!(s.record(&key).unwrap().unwrap().finished_ms, 2);
}

fn a_commit_refuses_missing_outputs(p: Place) {
    let s = p.open(TTL);
    let key = Hash::of(b"k2");
    let lease = held(s.try_lease(&key).unwrap());
    let mut rec = record(&s, key, Hash::of(b"never written"), 2);
    rec.common = s.put(b"c").unwrap();
    assert!(matches!(
        lease.commit(&rec),
        Err(StoreError::MissingOutput { .. })
    ));
    assert!(!s.has_record(&key));
}

fn plant_lease(s: &Store, info: &LeaseInfo) {
    let key = Store::lease_key(&info.key, info.generation);
    let bytes = serde_json::to_vec(info).unwrap();
    s.backend().put(&key, &bytes, Cond::Overwrite).unwrap();
}

fn a_dead_holder_on_this_host_is_taken_over_at_once(p: Place) {
    let s = p.open(TTL);
    let key = Hash::of(b"k3");
    // A lease of a process that does not exist (pid 1 with another start time), on this host.
    plant_lease(
        &s,
        &LeaseInfo {
            key,
            generation: 0,
            host: s.identity().host.clone(),
            pid: 1,
            boot_id: s.identity().boot_id.clone(),
            start_time: u64::MAX,
            acquired_ms: now_ms(),
            expires_ms: now_ms() + 3_600_000,
            renewals: 0,
        },
    );
    assert!(s.live_lease(&key).is_none());
    let l = held(s.try_lease(&key).unwrap());
    assert!(
        s.backend()
            .head(&Store::lease_key(&key, 1))
            .unwrap()
            .is_some()
    );
    drop(l);
    assert!(
        s.backend()
            .head(&Store::lease_key(&key, 1))
            .unwrap()
            .is_none()
    );
}

fn a_foreign_live_lease_blocks_until_it_expires(p: Place) {
    let s = p.open(TTL);
    let key = Hash::of(b"k4");
    let mut info = LeaseInfo {
        key,
        generation: 0,
        host: "another-machine".into(),
        pid: 1234,
        boot_id: "x".into(),
        start_time: 1,
        acquired_ms: now_ms(),
        expires_ms: now_ms() + 3_600_000,
        renewals: 0,
    };
    plant_lease(&s, &info);
    assert!(matches!(s.try_lease(&key).unwrap(), Acquire::Busy(_)));
    info.expires_ms = now_ms() - 1;
    plant_lease(&s, &info);
    let l = held(s.try_lease(&key).unwrap());
    assert_eq!(s.live_lease(&key).unwrap().generation, 1);
    drop(l);
}

/// The trap of STORAGE.md: an S3 ETag is the MD5 of the bytes, so a renewal that rewrote the
/// same bytes would keep the ETag, and a worker holding the old one could still win `If-Match`.
fn a_renewed_lease_cannot_be_taken_with_its_old_version(p: Place) {
    let s = p.open(Duration::from_millis(900));
    let key = Hash::of(b"k5");
    let lease = held(s.try_lease(&key).unwrap());
    let lk = Store::lease_key(&key, 0);
    let before = s.backend().get(&lk).unwrap().unwrap();
    // Wait for at least one heartbeat (every ttl / 3).
    let t0 = std::time::Instant::now();
    let after = loop {
        let now = s.backend().get(&lk).unwrap().unwrap();
        if now.bytes != before.bytes {
            break now;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no heartbeat");
        std::thread::sleep(Duration::from_millis(50));
    };
    let renewed = LeaseInfo::parse(&after.bytes).unwrap();
    assert!(
        renewed.renewals >= 1
            && renewed.expires_ms > LeaseInfo::parse(&before.bytes).unwrap().expires_ms
    );
    assert_ne!(after.version, before.version);
    // Taking over with the version read before the renewal fails…
    let mut thief = renewed.clone();
    thief.host = "thief".into();
    let stolen = s
        .backend()
        .put(
            &lk,
            &serde_json::to_vec(&thief).unwrap(),
            Cond::IfMatch(before.version.clone()),
        )
        .unwrap();
    assert_eq!(stolen, Put::Mismatch);
    assert_eq!(s.live_lease(&key).unwrap().pid, std::process::id());
    if p.is_bucket() {
        // …and the trap is real on this server: identical bytes keep the ETag.
        let cur = s.backend().get(&lk).unwrap().unwrap();
        let Put::Written(v) = s
            .backend()
            .put(&lk, &cur.bytes, Cond::IfMatch(cur.version.clone()))
            .unwrap()
        else {
            panic!("swap over the current version must succeed")
        };
        assert_eq!(v, cur.version, "the server's ETag is the content's");
    }
    drop(lease);
}

fn racing_workers_commit_each_key_exactly_once(p: Place) {
    let workers: Vec<Store> = (0..4).map(|_| p.open(TTL)).collect();
    let keys: Vec<Hash> = (0..12u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
    let written = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for (w, s) in workers.iter().enumerate() {
            let (keys, written) = (&keys, &written);
            sc.spawn(move || {
                for k in keys {
                    // Every worker ignores the lease and commits anyway: only the record's
                    // create-if-absent may decide.
                    let out = s.put(format!("{k} by {w}").as_bytes()).unwrap();
                    let lease = loop {
                        match s.try_lease(k).unwrap() {
                            Acquire::Held(l) => break l,
                            Acquire::Busy(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    };
                    if lease.commit(&record(s, *k, out, w as u64)).unwrap() == Committed::Written {
                        written.lock().unwrap().push((*k, w as u64));
                    }
                }
            });
        }
    });
    let written = written.into_inner().unwrap();
    assert_eq!(written.len(), keys.len(), "one winner per key: {written:?}");
    for (k, w) in written {
        assert_eq!(workers[0].record(&k).unwrap().unwrap().finished_ms, w);
    }
}

fn a_ref_is_written_once_by_workers_that_finish_together(p: Place) {
    let s = p.open(TTL);
    let (r, _) = build_one(&s, "trial", b"x");
    let workers: Vec<Store> = (0..4).map(|_| p.open(TTL)).collect();
    let outcomes: Vec<SetRef> = std::thread::scope(|sc| {
        let hs: Vec<_> = workers
            .iter()
            .map(|w| {
                let r = r.clone();
                sc.spawn(move || w.set_ref(&r).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        outcomes.iter().all(|o| *o == SetRef::AlreadySet),
        "{outcomes:?}"
    );
    // A new build replaces it exactly once among racers (each stamps its own write time, as
    // workers in separate processes stamp their host and pid).
    let mut newer = r.clone();
    newer.stage_key = Hash::of(b"newer");
    let outcomes: Vec<SetRef> = std::thread::scope(|sc| {
        let hs: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut r = newer.clone();
                r.built_ms += i as u64;
                sc.spawn(move || w.set_ref(&r).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let n = outcomes.iter().filter(|o| **o == SetRef::Written).count();
    assert_eq!(n, 1, "{outcomes:?}");
    assert_eq!(
        s.get_ref("trial").unwrap().unwrap().stage_key,
        newer.stage_key
    );
}

fn verify_quarantines_corruption_and_drops_what_it_broke(p: Place) {
    let s = p.open(TTL);
    let (_, key_a) = build_one(&s, "a", b"alpha");
    build_one(&s, "b", b"beta");
    assert!(s.verify().unwrap().is_clean());
    let id = Hash::of(b"alpha");
    s.backend()
        .put(&Store::object_key(&id), b"alphx", Cond::Overwrite)
        .unwrap();
    let rep = s.verify().unwrap();
    assert_eq!(rep.corrupt_objects, vec![id.to_hex()]);
    assert_eq!(rep.bad_records.len(), 1, "{rep:?}");
    assert_eq!(rep.dropped_refs.len(), 1, "{rep:?}");
    assert!(s.get_ref("a").unwrap().is_none());
    assert!(s.get_ref("b").unwrap().is_some());
    assert!(!s.has_record(&key_a));
    let q = s.backend().list("quarantine-v1/").unwrap();
    assert_eq!(
        q.len(),
        2,
        "{:?}",
        q.iter().map(|m| &m.key).collect::<Vec<_>>()
    );
    assert!(s.verify().unwrap().is_clean());
}

fn gc_keeps_what_refs_reach_fresh_values_and_live_leases(p: Place) {
    let s = p.open(TTL);
    let (_, reached) = build_one(&s, "a", b"reached");
    // Unreached: an object, and a record whose key another worker holds.
    let loose = s.put(b"loose").unwrap();
    let leased_out = s.put(b"leased output").unwrap();
    let leased = Hash::of(b"leased key");
    let l = held(s.try_lease(&leased).unwrap());
    // Nothing goes while it is fresh.
    let rep = s.gc(Duration::from_secs(3600), false).unwrap();
    assert_eq!(
        (rep.removed_objects, rep.removed_records),
        (0, 0),
        "{rep:?}"
    );
    // A grace of zero: the loose object goes; what a ref reaches stays; the leased key's
    // record (written under its live lease) and its output stay.
    l.commit(&record(&s, leased, leased_out, 3)).unwrap();
    let l2 = held(s.try_lease(&Hash::of(b"other")).unwrap());
    let keep_leased = s.put(b"kept by a lease").unwrap();
    let _ = keep_leased;
    std::thread::sleep(Duration::from_millis(1100)); // the bucket's clock has 1 s steps
    let rep = s.gc(Duration::ZERO, false).unwrap();
    assert!(!s.has_object(&loose));
    assert!(s.has_record(&reached) && s.has_object(&Hash::of(b"reached")));
    assert!(rep.removed_objects >= 2, "{rep:?}");
    assert_eq!(rep.removed_records, 1, "{rep:?}"); // the leased key's: its lease is gone
    assert!(!s.has_record(&leased));
    assert!(
        s.live_lease(&Hash::of(b"other")).is_some(),
        "a live lease is never removed"
    );
    assert!(s.verify().unwrap().is_clean());
    drop(l2);
    let rep = s.gc(Duration::ZERO, false).unwrap();
    assert_eq!(rep.removed_records, 0);
    assert!(s.backend().list("leases-v1/").unwrap().is_empty());
}

fn status_reads_leases_and_records_in_listings(p: Place) {
    let s = p.open(TTL);
    let keys: Vec<Hash> = (0..20u32).map(|i| Hash::of(&i.to_be_bytes())).collect();
    for k in keys.iter().step_by(2) {
        let out = s.put(k.to_hex().as_bytes()).unwrap();
        held(s.try_lease(k).unwrap())
            .commit(&record(&s, *k, out, 1))
            .unwrap();
    }
    let _l = held(s.try_lease(&keys[1]).unwrap());
    let before = s.requests();
    let present = s.records_present(&keys).unwrap();
    let leases = s.live_leases().unwrap();
    let used = s.requests();
    assert_eq!(present, (0..20).map(|i| i % 2 == 0).collect::<Vec<_>>());
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[&keys[1]].pid, std::process::id());
    if p.is_bucket() {
        // One shard's listing (to size the store), one listing of the records, one of the
        // leases, one read of the one lease: not a request per key.
        assert_eq!(used.list - before.list, 3, "{used:?}");
        assert_eq!(used.total() - before.total(), 4, "{used:?}");
    } else {
        assert_eq!(used.total(), 0, "a directory makes no requests");
    }
}

/// `pipe copy`'s library half: a directory into a bucket and back, verified on the way; what
/// the destination has stays; the copy is a store like any other.
#[test]
fn a_store_copies_into_the_other_backend_and_back() {
    let (d, b) = (Place::dir(), Place::bucket());
    let src = d.open(TTL);
    let (r, key) = build_one(&src, "trial", b"payload");
    let big: Vec<u8> = (0..(20 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let big_id = src.put(&big).unwrap();
    src.put_probe("server", &serde_json::json!({"digest": "x"}))
        .unwrap();
    let bucket = b.open(TTL);
    let nothing = |_: usize, _: usize| {};
    let rep = src.copy_to(&bucket, 8, &nothing).unwrap();
    assert_eq!((rep.records, rep.refs, rep.probes), (1, 1, 1), "{rep:?}");
    assert_eq!(bucket.get_ref("trial").unwrap().unwrap(), r);
    assert!(bucket.record(&key).unwrap().is_some());
    assert_eq!(bucket.get(&big_id).unwrap(), big);
    assert!(bucket.verify().unwrap().is_clean());
    // Again: everything is there already.
    let again = src.copy_to(&bucket, 8, &nothing).unwrap();
    assert_eq!((again.objects, again.records), (0, 0), "{again:?}");
    // A destination that moved on keeps its own ref: copying an older store never rolls it back.
    let (newer, _) = build_one(&bucket, "trial", b"the team's newer build");
    let kept = src.copy_to(&bucket, 8, &nothing).unwrap();
    assert_eq!((kept.refs, kept.refs_kept), (0, 1), "{kept:?}");
    assert_eq!(bucket.get_ref("trial").unwrap().unwrap(), newer);
    // And back into a new directory.
    let back = Place::dir();
    let dst = back.open(TTL);
    bucket.copy_to(&dst, 8, &nothing).unwrap();
    assert_eq!(dst.get_ref("trial").unwrap().unwrap(), newer);
    assert!(
        dst.record(&key).unwrap().is_some(),
        "the older build's records come along"
    );
    assert_eq!(dst.get(&big_id).unwrap(), big);
    assert!(dst.verify().unwrap().is_clean());
}

/// A bucket store that talks to `moto` through a [`FaultProxy`] with `rule`.
fn through_faults(
    rule: impl Fn(&common::s3::Seen, &[common::s3::Seen]) -> common::s3::Fault + Send + Sync + 'static,
) -> (Moto, common::s3::FaultProxy, Store) {
    let moto = Moto::start();
    let url = moto.bucket("faults");
    let proxy = common::s3::FaultProxy::start(moto.port, rule);
    let mut aws = moto.env();
    for (k, v) in &mut aws {
        if k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint();
        }
    }
    let opts = StoreOptions {
        aws,
        ..Default::default()
    };
    let s = Store::open_at(&Location::Bucket(url), opts).unwrap();
    (moto, proxy, s)
}

/// The first request that matches `what` gets `fault`; all others pass.
fn once(
    what: impl Fn(&common::s3::Seen) -> bool + Send + Sync + 'static,
    fault: common::s3::Fault,
) -> impl Fn(&common::s3::Seen, &[common::s3::Seen]) -> common::s3::Fault + Send + Sync + 'static {
    use common::s3::Fault;
    move |r, earlier| {
        if what(r) && earlier.iter().all(|e| e.fault == Fault::Pass) {
            fault
        } else {
            Fault::Pass
        }
    }
}

fn record_create(r: &common::s3::Seen) -> bool {
    r.method == "PUT" && r.header("if-none-match") == Some("*") && r.path.contains("/actions-v1/")
}

#[test]
fn a_create_whose_answer_was_lost_is_ours_when_read_back() {
    // The record lands, the answer is a 503; the client's retry then meets 412 (the key
    // exists). Only reading back tells that the winner is us.
    let (_m, proxy, s) = through_faults(once(record_create, common::s3::Fault::LoseAnswer(503)));
    let key = Hash::of(b"lost answer");
    let out = s.put(b"o").unwrap();
    let lease = held(s.try_lease(&key).unwrap());
    assert_eq!(
        lease.commit(&record(&s, key, out, 7)).unwrap(),
        Committed::Written
    );
    assert_eq!(s.record(&key).unwrap().unwrap().finished_ms, 7);
    let creates = proxy.seen().into_iter().filter(record_create).count();
    assert_eq!(creates, 2, "the create was retried once");
}

#[test]
fn a_create_refused_with_409_is_tried_again() {
    // AWS answers 409 ConditionalRequestConflict when a concurrent write raced ours — and
    // then nothing of ours was written. Reading back finds nothing, so we create again.
    let (_m, proxy, s) = through_faults(once(record_create, common::s3::Fault::Refuse(409)));
    let key = Hash::of(b"conflict");
    let out = s.put(b"o").unwrap();
    let lease = held(s.try_lease(&key).unwrap());
    assert_eq!(
        lease.commit(&record(&s, key, out, 9)).unwrap(),
        Committed::Written
    );
    assert_eq!(s.record(&key).unwrap().unwrap().finished_ms, 9);
    assert_eq!(proxy.seen().into_iter().filter(record_create).count(), 2);
}

#[test]
fn a_compare_and_swap_whose_answer_was_lost_is_ours_when_read_back() {
    let swap = |r: &common::s3::Seen| {
        r.method == "PUT" && r.header("if-match").is_some() && r.path.contains("/refs-v1/")
    };
    let (_m, proxy, s) = through_faults(once(swap, common::s3::Fault::LoseAnswer(503)));
    let (r, _) = build_one(&s, "trial", b"first");
    let mut newer = r.clone();
    newer.stage_key = Hash::of(b"second build");
    assert_eq!(s.set_ref(&newer).unwrap(), SetRef::Written);
    assert_eq!(s.get_ref("trial").unwrap().unwrap(), newer);
    assert_eq!(proxy.seen().into_iter().filter(swap).count(), 2);
}

#[test]
fn an_object_that_cannot_be_read_now_stops_verify_and_is_not_quarantined() {
    use common::s3::Fault;
    // Every read of objects fails with 503 (after the client's own retries): a bucket having
    // a bad minute, not a corrupt object.
    let (_m, _proxy, s) = through_faults(|r, _| {
        if r.method == "GET" && r.path.contains("/objects-v1/") {
            Fault::Refuse(503)
        } else {
            Fault::Pass
        }
    });
    let (_, key) = build_one(&s, "trial", b"fine");
    assert!(s.verify().is_err(), "verify must stop, not judge");
    assert!(s.backend().list("quarantine-v1/").unwrap().is_empty());
    assert!(s.has_record(&key) && s.get_ref("trial").unwrap().is_some());
    assert!(
        s.gc(Duration::ZERO, false).is_err(),
        "gc must stop, not sweep"
    );
    assert!(s.has_record(&key));
    assert!(
        s.backend()
            .head(&Store::object_key(&Hash::of(b"fine")))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_bucket_that_does_not_exist_is_named_with_what_to_do() {
    let m = Moto::start();
    let opts = StoreOptions {
        aws: m.env(),
        ..Default::default()
    };
    let err = Store::open_at(&Location::Bucket("s3://nobody-made-this/x".into()), opts)
        .err()
        .expect("no such bucket")
        .to_string();
    assert!(
        err.contains("the bucket does not exist")
            && err.contains("aws s3 mb s3://nobody-made-this"),
        "{err}"
    );
    assert!(!err.contains(common::s3::SECRET));
}

#[test]
fn a_shared_aws_profile_gives_what_the_environment_does_not() {
    let m = Moto::start();
    let url = m.bucket("profiled");
    let d = tempfile::tempdir().unwrap();
    let (creds, config) = (d.path().join("credentials"), d.path().join("config"));
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = wrong\n\n[team]\naws_access_key_id = team-key\naws_secret_access_key = {}\n",
            common::s3::SECRET
        ),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile team]\nregion = eu-west-1\nendpoint_url = {}\n",
            m.endpoint()
        ),
    )
    .unwrap();
    let with = |profile: &str| StoreOptions {
        aws: vec![
            ("AWS_PROFILE".into(), profile.into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                creds.display().to_string(),
            ),
            ("AWS_CONFIG_FILE".into(), config.display().to_string()),
        ],
        ..Default::default()
    };
    // Endpoint, region and keys all from the profile (without them the client would ask
    // real AWS, or instance metadata, which this machine cannot reach).
    let s = Store::open_at(&Location::Bucket(url.clone()), with("team")).unwrap();
    let id = s.put(b"through a profile").unwrap();
    assert_eq!(s.get(&id).unwrap(), b"through a profile");
    let err = Store::open_at(&Location::Bucket(url), with("nobody"))
        .err()
        .expect("an unknown profile")
        .to_string();
    assert!(err.contains("\"nobody\""), "{err}");
    assert!(!err.contains(common::s3::SECRET));
}
