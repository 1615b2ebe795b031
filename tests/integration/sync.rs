//! The device's TUF client (`wfrun_runtime::sync`) against release origins
//! on 127.0.0.1: repositories `wfrun release` writes and repositories
//! python-tuf (the reference implementation) writes, and the attacks TUF
//! exists to stop, each refused with its own code.

use crate::guests::{guest, root};
use crate::releases::{StaticServer, python_tuf, release, repository};
use std::path::Path;
use std::process::Command;
use wfrun_runtime::sync::{Client, Origin, SyncError, Timeouts};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn client(server: &StaticServer, trusted_root: &Path, store: &Path) -> Client {
    let origin = Origin::new(&server.url(), Timeouts::default()).unwrap();
    Client::new(origin, &std::fs::read(trusted_root).unwrap(), store).unwrap()
}

fn code(result: Result<impl std::fmt::Debug, SyncError>) -> &'static str {
    match result {
        Ok(value) => panic!("accepted: {value:?}"),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn the_device_reads_a_wfrun_repository_and_follows_its_releases() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let store = dir.path().join("device");
    let mut device = client(&server, &repo.join("metadata/root.json"), &store);
    device.refresh(now()).await.unwrap();
    let document = device.release("stable", now()).await.unwrap().expect("the channel has a release");
    assert_eq!(document.version, "1.0.0");
    let bundle = device.target(&document.bundles[0].target, now()).await.unwrap();
    assert_eq!(bundle, std::fs::read(guest("hello")).unwrap());
    assert!(device.release("beta", now()).await.unwrap().is_none(), "a channel with no release");

    std::fs::copy(guest("stats"), dir.path().join("stats.wasm")).unwrap();
    let stats = dir.path().join("stats.wasm");
    release(&["add", repo.to_str().unwrap(), "--channel", "stable", "--version", "1.1.0", stats.to_str().unwrap()]);
    // A new client over the same store: the trusted metadata was kept.
    let mut device = client(&server, &repo.join("metadata/1.root.json"), &store);
    device.refresh(now()).await.unwrap();
    assert_eq!(device.release("stable", now()).await.unwrap().unwrap().version, "1.1.0");
}

#[tokio::test]
async fn the_device_reads_a_repository_python_tuf_writes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = Command::new(python_tuf())
        .arg(root().join("tests/tuf/publish.py"))
        .arg(&repo)
        .args(["stable", "2.0.0"])
        .arg(guest("hello"))
        .output()
        .unwrap();
    assert!(out.status.success(), "publish.py: {}", String::from_utf8_lossy(&out.stderr));
    let server = StaticServer::start(&repo);
    let mut device = client(&server, &repo.join("metadata/1.root.json"), &dir.path().join("device"));
    device.refresh(now()).await.unwrap();
    let document = device.release("stable", now()).await.unwrap().unwrap();
    assert_eq!(document.version, "2.0.0");
    assert_eq!(
        device.target(&document.bundles[0].target, now()).await.unwrap(),
        std::fs::read(guest("hello")).unwrap()
    );

    // python-tuf's repository, with its timestamp expired an hour ago: refused.
    let stale = dir.path().join("stale");
    let out = Command::new(python_tuf())
        .arg(root().join("tests/tuf/publish.py"))
        .arg(&stale)
        .args(["stable", "2.0.0"])
        .arg(guest("hello"))
        .arg("--expired")
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = StaticServer::start(&stale);
    let mut device = client(&server, &stale.join("metadata/1.root.json"), &dir.path().join("device-stale"));
    assert_eq!(code(device.refresh(now()).await), "metadata_expired");
}

#[tokio::test]
async fn forged_rolled_back_and_changed_metadata_and_targets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let trusted_root = repo.join("metadata/1.root.json");
    let timestamp = repo.join("metadata/timestamp.json");

    // Arbitrary software: a timestamp changed after signing.
    let original = std::fs::read_to_string(&timestamp).unwrap();
    std::fs::write(&timestamp, original.replacen("\"version\": 2\n  }", "\"version\": 9\n  }", 1)).unwrap();
    let mut device = client(&server, &trusted_root, &dir.path().join("forged"));
    assert_eq!(code(device.refresh(now()).await), "metadata_signature");
    std::fs::write(&timestamp, &original).unwrap();

    // Rollback: a device that saw timestamp v3 is then served v2 again.
    let store = dir.path().join("device");
    release(&["timestamp", repo.to_str().unwrap()]);
    client(&server, &trusted_root, &store).refresh(now()).await.unwrap();
    std::fs::write(&timestamp, &original).unwrap();
    let mut device = client(&server, &trusted_root, &store);
    assert_eq!(code(device.refresh(now()).await), "metadata_rollback");

    // Freeze: the same metadata, seen from a week later, is expired.
    release(&["timestamp", repo.to_str().unwrap()]);
    let later = now() + jiff::SignedDuration::from_hours(24 * 8);
    let mut device = client(&server, &trusted_root, &dir.path().join("frozen"));
    assert_eq!(code(device.refresh(later).await), "metadata_expired");

    // A bundle whose bytes changed: refused against its signed hash.
    let mut device = client(&server, &trusted_root, &dir.path().join("changed"));
    device.refresh(now()).await.unwrap();
    let document = device.release("stable", now()).await.unwrap().unwrap();
    let files = std::fs::read_dir(repo.join("targets/bundles/stable/1.0.0")).unwrap();
    let file = files.map(|e| e.unwrap().path()).next().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(code(device.target(&document.bundles[0].target, now()).await), "metadata_integrity");

    // Endless data: a timestamp far past the size a timestamp may have.
    std::fs::write(&timestamp, vec![b' '; 64 * 1024]).unwrap();
    let mut device = client(&server, &trusted_root, &dir.path().join("endless"));
    assert_eq!(code(device.refresh(now()).await), "unreachable");

    // Another repository's root: nothing it serves verifies.
    let other = tempfile::tempdir().unwrap();
    let other_repo = repository(other.path());
    std::fs::write(&timestamp, &original).unwrap();
    let mut device = client(&server, &other_repo.join("metadata/1.root.json"), &dir.path().join("stranger"));
    assert_eq!(code(device.refresh(now()).await), "metadata_signature");
}

#[tokio::test]
async fn an_origin_that_is_gone_is_unreachable_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let port = {
        let server = StaticServer::start(&repo);
        server.url()
    };
    let origin = Origin::new(&port, Timeouts::default()).unwrap();
    let trusted = std::fs::read(repo.join("metadata/root.json")).unwrap();
    let mut device = Client::new(origin, &trusted, &dir.path().join("device")).unwrap();
    assert_eq!(code(device.refresh(now()).await), "unreachable");
    assert!(Origin::new("ftp://127.0.0.1/", Timeouts::default()).is_err());
    let garbage = Client::new(Origin::new("http://127.0.0.1:1", Timeouts::default()).unwrap(), b"{}", dir.path());
    assert_eq!(code(garbage.map(|_| ())), "trusted_root");
}

/// `wfrun-tuf-client` (the conformance suite's client CLI over the same
/// client code): its exit status.
fn conformance(args: &[&std::ffi::OsStr]) -> i32 {
    let out = Command::new(env!("CARGO_BIN_EXE_wfrun-tuf-client")).args(args).output().unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn the_conformance_client_keeps_a_plain_metadata_directory_and_downloads_once() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let metadata = dir.path().join("md");
    let targets = dir.path().join("dl");
    let url = format!("{}/metadata", server.url());
    let base = format!("{}/targets", server.url());
    let md = metadata.as_os_str();
    let trusted_root = repo.join("metadata/1.root.json");
    assert_eq!(conformance(&[OsStr::new("--metadata-dir"), md, OsStr::new("init"), trusted_root.as_os_str()]), 0);
    let refresh =
        [OsStr::new("--metadata-dir"), md, OsStr::new("--metadata-url"), OsStr::new(&url), OsStr::new("refresh")];
    assert_eq!(conformance(&refresh), 0);
    let mut names: Vec<String> =
        std::fs::read_dir(&metadata).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["root.json", "snapshot.json", "targets.json", "timestamp.json"]);

    let bundle = "bundles/stable/1.0.0/hello.wasm";
    let download = [
        OsStr::new("--metadata-dir"),
        md,
        OsStr::new("--metadata-url"),
        OsStr::new(&url),
        OsStr::new("--target-name"),
        OsStr::new(bundle),
        OsStr::new("--target-base-url"),
        OsStr::new(&base),
        OsStr::new("--target-dir"),
        targets.as_os_str(),
        OsStr::new("download"),
    ];
    assert_eq!(conformance(&download), 0);
    let file = targets.join("bundles%2Fstable%2F1.0.0%2Fhello.wasm");
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(guest("hello")).unwrap());
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(conformance(&download), 0);
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), written, "a present, matching target is kept");
    std::fs::write(&file, b"damaged").unwrap();
    assert_eq!(conformance(&download), 0);
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(guest("hello")).unwrap(), "a damaged one is fetched again");

    // A forged timestamp: exit 1.
    let timestamp = repo.join("metadata/timestamp.json");
    let original = std::fs::read_to_string(&timestamp).unwrap();
    std::fs::write(&timestamp, original.replacen("\"version\": 2\n  }", "\"version\": 9\n  }", 1)).unwrap();
    let fresh = dir.path().join("md2");
    assert_eq!(
        conformance(&[OsStr::new("--metadata-dir"), fresh.as_os_str(), OsStr::new("init"), trusted_root.as_os_str()]),
        0
    );
    let refresh = [
        OsStr::new("--metadata-dir"),
        fresh.as_os_str(),
        OsStr::new("--metadata-url"),
        OsStr::new(&url),
        OsStr::new("refresh"),
    ];
    assert_eq!(conformance(&refresh), 1);
    assert_eq!(conformance(&[OsStr::new("--metadata-dir"), md, OsStr::new("bogus")]), 1);
}

#[tokio::test]
async fn a_release_is_staged_only_through_its_gates_and_only_verified_bytes_are_written() {
    use wfrun_runtime::sync::gates::Device;
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let staging = dir.path().join("staging");
    let mut device = client(&server, &repo.join("metadata/root.json"), &dir.path().join("device"));
    device.refresh(now()).await.unwrap();
    let me = |active: Option<&str>, channel: &str| Device {
        runner_version: semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap(),
        channel: channel.to_owned(),
        ring: 0,
        active: active.map(|v| semver::Version::parse(v).unwrap()),
        active_digest: None,
        bad: Default::default(),
    };

    let staged = device.stage("stable", &me(None, "stable"), &staging, now()).await.unwrap().unwrap();
    assert_eq!(staged.document.version, "1.0.0");
    assert_eq!(staged.bundles.len(), 1);
    assert_eq!(std::fs::read(&staged.bundles[0].1).unwrap(), std::fs::read(guest("hello")).unwrap());
    assert!(staged.dir.join("release.json").is_file());
    assert!(staged.dir.starts_with(&staging));

    let refused = |result: Result<Option<wfrun_runtime::sync::Staged>, wfrun_runtime::sync::StageError>| match result {
        Ok(staged) => panic!("staged {staged:?}"),
        Err(e) => e.code(),
    };
    assert_eq!(refused(device.stage("stable", &me(Some("1.0.0"), "stable"), &staging, now()).await), "already_active");
    assert_eq!(refused(device.stage("stable", &me(Some("2.0.0"), "stable"), &staging, now()).await), "downgrade");
    let known_bad = Device { bad: [(staged.digest.clone(), "1.0.0".to_owned())].into(), ..me(None, "stable") };
    assert_eq!(refused(device.stage("stable", &known_bad, &staging, now()).await), "known_bad");
    // A poll that finds nothing new costs the timestamp and the look for a
    // newer root: the active (or a known-bad) release is recognised by its
    // signed hash, not downloaded again.
    server.take_requests();
    device.refresh(now()).await.unwrap();
    let active = Device { active_digest: Some(staged.digest.clone()), ..me(Some("1.0.0"), "stable") };
    assert_eq!(refused(device.stage("stable", &active, &staging, now()).await), "already_active");
    assert_eq!(refused(device.stage("stable", &known_bad, &staging, now()).await), "known_bad");
    assert_eq!(server.take_requests(), ["/metadata/2.root.json", "/metadata/timestamp.json"]);
    assert!(device.stage("beta", &me(None, "beta"), &staging, now()).await.unwrap().is_none(), "no such channel");

    // A bundle changed on the origin: refused, and nothing of it written.
    let other = dir.path().join("staging-2");
    let files = std::fs::read_dir(repo.join("targets/bundles/stable/1.0.0")).unwrap();
    let file = files.map(|e| e.unwrap().path()).next().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let mut fresh = client(&server, &repo.join("metadata/root.json"), &dir.path().join("device-2"));
    fresh.refresh(now()).await.unwrap();
    assert_eq!(refused(fresh.stage("stable", &me(None, "stable"), &other, now()).await), "metadata_integrity");
    let written: Vec<_> = walk(&other);
    assert!(written.iter().all(|p| p.is_dir()), "no file was written: {written:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_slow_origin_is_cut_off_by_the_transfer_timeout() {
    use std::io::{Read, Write};
    // A server that answers every request with headers, then a byte a second.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let started = std::time::Instant::now();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed() < std::time::Duration::from_secs(20)
        {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n");
                for _ in 0..20 {
                    if flag.load(std::sync::atomic::Ordering::SeqCst) || stream.write_all(b" ").is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let timeouts = Timeouts { connect: std::time::Duration::from_secs(2), transfer: std::time::Duration::from_secs(1) };
    let origin = Origin::new(&format!("http://127.0.0.1:{port}"), timeouts).unwrap();
    let mut device = Client::new(origin, &std::fs::read(repo.join("metadata/root.json")).unwrap(), dir.path()).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(code(device.refresh(now()).await), "unreachable");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
}
