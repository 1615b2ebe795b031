//! Signed bundles: keygen, sign, verify, and `exec --trust`. Every kind of
//! tampering is refused, each with its own code.

use crate::exec::wfrun;
use crate::guests::{guest, root};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let out = wfrun().args(["keygen", "--out"]).arg(dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (dir.join("wfrun.key"), dir.join("wfrun.pub"))
}

fn sign(bundle: &Path, key: &Path, detached: bool) {
    let mut command = wfrun();
    command.arg("sign").arg(bundle).arg("--key").arg(key);
    if detached {
        command.arg("--detached");
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `wfrun verify --json`: (exit status, error_code).
fn verify(bundle: &Path, public: &Path) -> (i32, Value) {
    let out = wfrun().arg("verify").arg(bundle).arg("--trust").arg(public).arg("--json").output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.code().unwrap(), report["error_code"].clone())
}

fn copy_guest(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::copy(guest(name), &path).unwrap();
    path
}

/// Replaces the first `from` in the file with `to` (same length).
fn tamper(path: &Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the bytes to tamper with are there");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

/// A `wfrun:signature` custom section holding `json`, encoded by hand.
fn signature_section(json: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"wfrun:signature";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(json.as_bytes());
    let mut section = vec![0u8];
    leb(content.len(), &mut section);
    section.extend(content);
    section
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(dir.path());
    assert!(std::fs::read_to_string(&public).unwrap().starts_with("ed25519:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let before = std::fs::read(&secret).unwrap();
    let again = wfrun().args(["keygen", "--out"]).arg(dir.path()).output().unwrap();
    assert_eq!(again.status.code(), Some(6));
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

#[test]
fn a_signed_bundle_verifies_runs_under_trust_and_stays_a_valid_component() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(&dir.path().join("keys"));
    let hello = copy_guest(dir.path(), "hello");
    sign(&hello, &secret, false);
    wasmparser::Validator::new().validate_all(&std::fs::read(&hello).unwrap()).expect("still a valid component");
    assert_eq!(verify(&hello, &public), (0, Value::Null));

    let run = wfrun()
        .arg("exec")
        .arg(&hello)
        .arg("--trust")
        .arg(&public)
        .args(["--input", r#"{"name":"signed"}"#])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "{\"greeting\":\"Hello, signed!\"}\n");
}

#[test]
fn every_tampering_is_refused_with_its_own_code() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(&dir.path().join("keys"));
    let (_, other_public) = keygen(&dir.path().join("other"));
    let fresh = |name: &str| {
        let path = copy_guest(dir.path(), "hello");
        let renamed = dir.path().join(format!("{name}.wasm"));
        std::fs::rename(&path, &renamed).unwrap();
        sign(&renamed, &secret, false);
        renamed
    };

    // A changed byte of code data (the salutation string in hello's data).
    let code = fresh("code");
    tamper(&code, b"Hello", b"Jello");
    assert_eq!(verify(&code, &public), (6, Value::from("signature_invalid")));

    // A changed byte of the signature itself.
    let sig = fresh("sig");
    let record_at = std::fs::read(&sig).unwrap().windows(13).position(|w| w == b"\"signature\":\"").unwrap() + 13;
    let mut bytes = std::fs::read(&sig).unwrap();
    bytes[record_at] = if bytes[record_at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&sig, bytes).unwrap();
    assert_eq!(verify(&sig, &public), (6, Value::from("signature_invalid")));

    // Signed by a key nobody trusts.
    assert_eq!(verify(&fresh("stranger"), &other_public), (6, Value::from("signature_untrusted")));

    // A truncated signature: the record re-encoded with half a signature.
    let truncated = fresh("truncated");
    let original = std::fs::read(guest("hello")).unwrap();
    let section = std::fs::read(&truncated).unwrap()[original.len()..].to_vec();
    let json_at = section.iter().position(|b| *b == b'{').unwrap();
    let mut record: Value = serde_json::from_slice(&section[json_at..]).unwrap();
    let half = record["signature"].as_str().unwrap()[..64].to_owned();
    record["signature"] = Value::from(half);
    std::fs::write(&truncated, [original.clone(), signature_section(&record.to_string())].concat()).unwrap();
    assert_eq!(verify(&truncated, &public), (6, Value::from("signature_malformed")));

    // Two signature sections, and a section after the signature.
    let twice = fresh("twice");
    let bytes = std::fs::read(&twice).unwrap();
    let section = bytes[original.len()..].to_vec();
    std::fs::write(&twice, [bytes.clone(), section].concat()).unwrap();
    assert_eq!(verify(&twice, &public), (6, Value::from("signature_duplicated")));
    let after = fresh("after");
    let extra = [0u8, 6, 5, b'e', b'x', b't', b'r', b'a'];
    std::fs::write(&after, [std::fs::read(&after).unwrap(), extra.to_vec()].concat()).unwrap();
    assert_eq!(verify(&after, &public), (6, Value::from("signature_misplaced")));

    // Unsigned, under a trust policy.
    let unsigned = copy_guest(dir.path(), "stats");
    assert_eq!(verify(&unsigned, &public), (6, Value::from("signature_missing")));
}

#[test]
fn a_changed_workflow_definition_is_refused_even_without_a_trust_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(&dir.path().join("keys"));
    let toml = std::fs::read_to_string(root().join("examples/workflows/report/workflow.toml")).unwrap();
    let toml = ["parse", "aggregate", "format"].iter().fold(toml, |t, n| {
        t.replace(&format!("\"../../dist/{n}.wasm\""), &format!("{:?}", guest(n).display().to_string()))
    });
    std::fs::write(dir.path().join("workflow.toml"), toml).unwrap();
    let bundle = dir.path().join("report.wasm");
    let packed = wfrun().arg("pack").arg(dir.path().join("workflow.toml")).arg("-o").arg(&bundle).output().unwrap();
    assert_eq!(packed.status.code(), Some(0));
    sign(&bundle, &secret, false);
    tamper(&bundle, b"Totals by name", b"Totals by nose");
    let run = wfrun()
        .arg("exec")
        .arg("--json")
        .arg(&bundle)
        .args(["--input", r#"{"csv":"name,amount\nada,1"}"#])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(6));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["error_code"], "invalid_bundle");
    assert_eq!(report["error_detail"], "signature_invalid", "{report}");
}

#[test]
fn detached_signatures_sign_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(&dir.path().join("keys"));
    let stats = copy_guest(dir.path(), "stats");
    sign(&stats, &secret, true);
    assert!(dir.path().join("stats.wasm.sig").exists());
    assert_eq!(verify(&stats, &public), (0, Value::Null));
    let run = wfrun()
        .arg("exec")
        .arg(&stats)
        .arg("--trust")
        .arg(&public)
        .args(["--input", r#"{"values":[1]}"#])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
    // Any byte of the file changed: refused.
    let mut bytes = std::fs::read(&stats).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&stats, bytes).unwrap();
    let (status, _) = verify(&stats, &public);
    assert_eq!(status, 6);
}
