//! Key rotation and the attacks only a key holder can make: an attacker
//! who stole (or still holds) a role's key signs metadata of their own,
//! and the device's TUF client must refuse it, or recover once the
//! operator rotates the key with `wfrun release rotate`. python-tuf, the
//! reference client, follows the same rotated chain.

use crate::releases::{StaticServer, python_client, release, repository};
use serde_json::Value;
use std::path::{Path, PathBuf};
use wfrun_runtime::bundle::signature::SecretKey;
use wfrun_runtime::release::metadata::{Key, MetaFile, Metadata, Pins, Root, Signature, TargetFile, Targets, hashes};
use wfrun_runtime::sync::{Client, Origin, SyncError, Timeouts};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn device(server: &StaticServer, trusted_root: &Path, store: &Path) -> Client {
    let origin = Origin::new(&server.url(), Timeouts::default()).unwrap();
    Client::new(origin, &std::fs::read(trusted_root).unwrap(), store).unwrap()
}

fn code(result: Result<(), SyncError>) -> &'static str {
    match result {
        Ok(()) => panic!("accepted"),
        Err(e) => e.code(),
    }
}

/// `wfrun release rotate REPO ARGS… --json`, parsed.
fn rotate(repo: &Path, args: &[&str]) -> Value {
    let mut all = vec!["rotate", repo.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_slice(&release(&all).stdout).unwrap()
}

/// The secret key files of `role` in the repository's `keys/`, copied
/// aside (as an attacker who stole them would keep them).
fn steal(repo: &Path, role: &str, into: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(into).unwrap();
    let mut stolen = Vec::new();
    for entry in std::fs::read_dir(repo.join("keys")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(role) && name.ends_with(".key") {
            let to = into.join(&name);
            std::fs::copy(entry.path(), &to).unwrap();
            stolen.push(to);
        }
    }
    stolen.sort();
    stolen
}

fn keys(files: &[PathBuf]) -> Vec<SecretKey> {
    files.iter().map(|f| SecretKey::load(f).unwrap()).collect()
}

fn read<T: serde::de::DeserializeOwned + serde::Serialize>(path: &Path, role: &'static str) -> Metadata<T> {
    Metadata::from_bytes("metadata", role, &std::fs::read(path).unwrap()).unwrap()
}

fn write<T: serde::de::DeserializeOwned + serde::Serialize>(path: &Path, signed: T, keys: &[SecretKey]) {
    std::fs::write(path, Metadata::sign(signed, &keys.iter().collect::<Vec<_>>()).to_bytes()).unwrap();
}

/// A timestamp of `version` pinning snapshot `snapshot`, signed by `keys`.
fn forge_timestamp(repo: &Path, version: u32, snapshot: u32, keys: &[SecretKey]) {
    let path = repo.join("metadata/timestamp.json");
    let mut timestamp = read::<Pins>(&path, "timestamp").signed;
    let bytes = std::fs::read(repo.join(format!("metadata/{snapshot}.snapshot.json"))).unwrap();
    timestamp.version = version;
    timestamp.meta.insert(
        "snapshot.json".into(),
        MetaFile { version: snapshot, length: Some(bytes.len() as u64), hashes: Some(hashes(&bytes)) },
    );
    write(&path, timestamp, keys);
}

fn newest(repo: &Path, role: &str) -> u32 {
    let suffix = format!(".{role}.json");
    std::fs::read_dir(repo.join("metadata"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(&suffix)?.parse().ok())
        .max()
        .unwrap()
}

#[tokio::test]
async fn a_device_follows_root_rotations_and_what_a_revoked_key_signs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let first_root = dir.path().join("1.root.json");
    std::fs::copy(repo.join("metadata/1.root.json"), &first_root).unwrap();
    let store = dir.path().join("device");
    device(&server, &first_root, &store).refresh(now()).await.unwrap();

    // 1 → 2: new root keys; 2 → 3: a new timestamp key. A device that did
    // not walk the chain could not verify v3's timestamp.
    let old_root = steal(&repo, "root", &dir.path().join("stolen-root"));
    let old_timestamp = steal(&repo, "timestamp", &dir.path().join("stolen-timestamp"));
    assert_eq!(rotate(&repo, &["root"])["root_version"], 2);
    let rotated = rotate(&repo, &["timestamp"]);
    assert_eq!((rotated["root_version"].as_u64(), rotated["revoked"].as_array().map(Vec::len)), (Some(3), Some(1)));
    assert!(repo.join("keys/retired").read_dir().unwrap().count() >= 3, "revoked keys are moved aside");
    device(&server, &first_root, &store).refresh(now()).await.unwrap();
    let fresh = dir.path().join("fresh");
    device(&server, &first_root, &fresh).refresh(now()).await.unwrap();
    let (status, answer, error) = python_client(&server, &dir.path().join("python"), &first_root, &[]);
    assert_eq!(status, 0, "python-tuf follows the chain: {error}");
    assert_eq!(answer["versions"]["root"], 3);

    // The revoked timestamp key signs a newer timestamp: refused.
    let published = std::fs::read(repo.join("metadata/timestamp.json")).unwrap();
    let current = read::<Pins>(&repo.join("metadata/timestamp.json"), "timestamp").signed;
    forge_timestamp(&repo, current.version + 1, current.meta["snapshot.json"].version, &keys(&old_timestamp));
    assert_eq!(code(device(&server, &first_root, &store).refresh(now()).await), "metadata_signature");
    std::fs::write(repo.join("metadata/timestamp.json"), &published).unwrap();

    // The revoked root keys sign a root of their own (their keys for every
    // role): it does not meet root 3's threshold.
    let mut forged = read::<Root>(&repo.join("metadata/3.root.json"), "root").signed;
    let attacker = keys(&old_root);
    forged.version = 4;
    for role in forged.roles.values_mut() {
        role.keyids = attacker.iter().map(|k| Key::ed25519(&k.public()).key_id()).collect();
    }
    for key in &attacker {
        forged.keys.insert(Key::ed25519(&key.public()).key_id(), Key::ed25519(&key.public()));
    }
    write(&repo.join("metadata/4.root.json"), forged, &attacker);
    assert_eq!(code(device(&server, &first_root, &store).refresh(now()).await), "metadata_signature");
    std::fs::remove_file(repo.join("metadata/4.root.json")).unwrap();

    // A compromised root key dropped, the other kept (2 of 2 → the kept one
    // and a new one): the device goes on; the dropped key alone is nothing.
    let root_keys = steal(&repo, "root", &dir.path().join("root-now"));
    let compromised = Key::ed25519(&SecretKey::load(&root_keys[0]).unwrap().public()).key_id();
    let dropped = rotate(&repo, &["root", "--revoke", &compromised[..12]]);
    assert_eq!(dropped["root_version"], 4);
    assert_eq!(dropped["keyids"].as_array().unwrap().len(), 2);
    assert!(!dropped["keyids"].as_array().unwrap().contains(&Value::from(compromised.clone())));
    device(&server, &first_root, &store).refresh(now()).await.unwrap();
    let root4 = read::<Root>(&repo.join("metadata/4.root.json"), "root");
    assert_eq!(root4.valid_signatures(&read::<Root>(&repo.join("metadata/3.root.json"), "root").signed, "root"), 2);
    let mut forged = root4.signed.clone();
    forged.version = 5;
    write(&repo.join("metadata/5.root.json"), forged, &keys(&root_keys[..1]));
    assert_eq!(code(device(&server, &first_root, &store).refresh(now()).await), "metadata_signature");
}

#[tokio::test]
async fn rollback_fast_forward_and_mix_and_match_by_a_key_holder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = StaticServer::start(&repo);
    let root = repo.join("metadata/1.root.json");
    let store = dir.path().join("device");
    release(&["publish", repo.to_str().unwrap()]); // targets, snapshot, timestamp v3
    device(&server, &root, &store).refresh(now()).await.unwrap();
    let timestamp_keys = keys(&steal(&repo, "timestamp", &dir.path().join("t")));
    let snapshot_keys = keys(&steal(&repo, "snapshot", &dir.path().join("s")));
    let published = std::fs::read(repo.join("metadata/timestamp.json")).unwrap();
    let restore = || std::fs::write(repo.join("metadata/timestamp.json"), &published).unwrap();

    // Snapshot rollback: a newer timestamp pinning the older snapshot 2.
    forge_timestamp(&repo, 10, 2, &timestamp_keys);
    assert_eq!(code(device(&server, &root, &store).refresh(now()).await), "metadata_rollback");
    restore();

    // Targets rollback: a newer snapshot (and timestamp) pinning targets 2.
    let mut snapshot = read::<Pins>(&repo.join("metadata/3.snapshot.json"), "snapshot").signed;
    snapshot.version = 4;
    snapshot.meta.insert("targets.json".into(), MetaFile { version: 2, length: None, hashes: None });
    write(&repo.join("metadata/4.snapshot.json"), snapshot, &snapshot_keys);
    forge_timestamp(&repo, 11, 4, &timestamp_keys);
    assert_eq!(code(device(&server, &root, &store).refresh(now()).await), "metadata_rollback");
    std::fs::remove_file(repo.join("metadata/4.snapshot.json")).unwrap();
    restore();

    // Mix and match: targets 2's signed content served as targets 3.
    let targets3 = std::fs::read(repo.join("metadata/3.targets.json")).unwrap();
    std::fs::copy(repo.join("metadata/2.targets.json"), repo.join("metadata/3.targets.json")).unwrap();
    let fresh = dir.path().join("fresh");
    assert_eq!(code(device(&server, &root, &fresh).refresh(now()).await), "metadata_integrity");
    std::fs::write(repo.join("metadata/3.targets.json"), &targets3).unwrap();

    // Fast-forward: the stolen timestamp key signs version 1,000,000. The
    // device takes it (the key is valid) and refuses the real timestamps
    // after it…
    // (A device of its own: the one above now trusts the forged snapshot 4,
    // validly signed with the stolen snapshot key.)
    let store = dir.path().join("fast-forwarded");
    device(&server, &root, &store).refresh(now()).await.unwrap();
    forge_timestamp(&repo, 1_000_000, 3, &timestamp_keys);
    device(&server, &root, &store).refresh(now()).await.unwrap();
    restore();
    release(&["timestamp", repo.to_str().unwrap()]);
    assert_eq!(code(device(&server, &root, &store).refresh(now()).await), "metadata_rollback");
    // …until the operator rotates the timestamp key: the device forgets the
    // timestamp signed by the old key and follows the new one.
    rotate(&repo, &["timestamp"]);
    device(&server, &root, &store).refresh(now()).await.unwrap();
    let latest = newest(&repo, "snapshot");
    assert!(latest >= 4, "the rotation re-signed snapshot and timestamp ({latest})");
}

#[tokio::test]
async fn a_threshold_of_duplicate_keys_or_signatures_and_a_dotted_target_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()); // root threshold 2
    let server = StaticServer::start(&repo);
    let root = repo.join("metadata/1.root.json");
    let root_keys = keys(&steal(&repo, "root", &dir.path().join("r")));

    // Root 2 lists one root key under two ids with threshold 2, signed by
    // root 1's two keys, and by that one key once per id.
    let mut forged = read::<Root>(&root, "root").signed;
    forged.version = 2;
    let key = Key::ed25519(&root_keys[0].public());
    let (real, alias) = (key.key_id(), format!("{:0>64}", "a1"));
    forged.keys.insert(alias.clone(), key);
    forged.roles.get_mut("root").unwrap().keyids = vec![real.clone(), alias.clone()];
    let mut signed = Metadata::sign(forged, &root_keys.iter().collect::<Vec<_>>());
    let again = signed.signatures.iter().find(|s| s.keyid == real).unwrap().sig.clone();
    signed.signatures.push(Signature { keyid: alias, sig: again });
    std::fs::write(repo.join("metadata/2.root.json"), signed.to_bytes()).unwrap();
    assert_eq!(code(device(&server, &root, &dir.path().join("a")).refresh(now()).await), "metadata_malformed");
    let origin = Origin::new(&server.url(), Timeouts::default()).unwrap();
    let pinned = Client::new(origin, &signed.to_bytes(), &dir.path().join("pinned")).map(|_| ());
    assert_eq!(code(pinned), "trusted_root", "nor is such a root pinned");
    std::fs::remove_file(repo.join("metadata/2.root.json")).unwrap();

    // Root 2 with threshold 2 met by one key's signature listed twice.
    let mut forged = read::<Root>(&root, "root").signed;
    forged.version = 2;
    let mut signed = Metadata::sign(forged, &root_keys.iter().collect::<Vec<_>>());
    signed.signatures[1] = signed.signatures[0].clone();
    std::fs::write(repo.join("metadata/2.root.json"), signed.to_bytes()).unwrap();
    assert_eq!(code(device(&server, &root, &dir.path().join("b")).refresh(now()).await), "metadata_signature");
    std::fs::remove_file(repo.join("metadata/2.root.json")).unwrap();

    // A signed target whose path climbs out of the targets directory.
    let targets_keys = keys(&steal(&repo, "targets", &dir.path().join("g")));
    let version = newest(&repo, "targets");
    let mut targets = read::<Targets>(&repo.join(format!("metadata/{version}.targets.json")), "targets").signed;
    let bytes = b"not for you".to_vec();
    targets.version = version + 1;
    let climbing = "bundles/../../../../etc/passwd";
    targets
        .targets
        .insert(climbing.into(), TargetFile { length: bytes.len() as u64, hashes: hashes(&bytes), custom: None });
    write(&repo.join(format!("metadata/{}.targets.json", version + 1)), targets, &targets_keys);
    let snapshot_keys = keys(&steal(&repo, "snapshot", &dir.path().join("s")));
    let snapshot_version = newest(&repo, "snapshot");
    let mut snapshot =
        read::<Pins>(&repo.join(format!("metadata/{snapshot_version}.snapshot.json")), "snapshot").signed;
    snapshot.version = snapshot_version + 1;
    snapshot.meta.insert("targets.json".into(), MetaFile { version: version + 1, length: None, hashes: None });
    write(&repo.join(format!("metadata/{}.snapshot.json", snapshot_version + 1)), snapshot, &snapshot_keys);
    let timestamp = read::<Pins>(&repo.join("metadata/timestamp.json"), "timestamp").signed;
    forge_timestamp(
        &repo,
        timestamp.version + 1,
        snapshot_version + 1,
        &keys(&steal(&repo, "timestamp", &dir.path().join("t"))),
    );
    let mut client = device(&server, &root, &dir.path().join("c"));
    client.refresh(now()).await.unwrap();
    let refused = client.target(climbing, now()).await.map(|_| ());
    assert_eq!(code(refused), "bad_target_path");
}
