//! Driving a daemon from the CLI over its HTTP control API (TLS, a bearer
//! token), the same commands as over the local socket; `--wait`; the client
//! config's profiles; completions and the manual page.

use crate::daemon::{DaemonProcess, free_port, stderr, toml_path, wait_for};
use crate::guests::guest;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A private CA and a certificate it issued for 127.0.0.1, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// A daemon with its control API on 127.0.0.1 over TLS, and the flags a
/// client needs to reach it.
struct Remote {
    _daemon: DaemonProcess,
    url: String,
    token: PathBuf,
    ca: PathBuf,
}

impl Remote {
    fn start(extra_config: &str) -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let token = dir.path().join("control.token");
        std::fs::write(&token, "a-control-token-of-at-least-32-characters\n").unwrap();
        let port = free_port();
        let config = format!(
            "[control_http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {}\ntls_cert = {}\ntls_key = {}\n{extra_config}",
            toml_path(&token),
            toml_path(&cert),
            toml_path(&key)
        );
        let daemon = DaemonProcess::start_in(dir, &config);
        let url = format!("https://127.0.0.1:{port}");
        let up = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(wait_for(Duration::from_secs(30), up), "no control listener; log:\n{}", daemon.log());
        Remote { _daemon: daemon, url, token, ca }
    }

    /// The flags naming this daemon.
    fn flags(&self) -> Vec<String> {
        vec![
            "--remote".to_owned(),
            self.url.clone(),
            "--token-file".to_owned(),
            self.token.display().to_string(),
            "--ca-file".to_owned(),
            self.ca.display().to_string(),
        ]
    }
}

/// Runs `wfrun ARGS` with no state directory of the daemon's, no client
/// config and no WFRUN_* environment but `env`.
fn client(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfrun"));
    for name in ["WFRUN_DIR", "WFRUN_REMOTE", "WFRUN_TOKEN_FILE", "WFRUN_CA_FILE", "WFRUN_PROFILE"] {
        command.env_remove(name);
    }
    command.env("WFRUN_CLIENT_CONFIG", "/nonexistent/wfrun-client.toml");
    command.envs(env.iter().map(|(k, v)| (k, v.as_os_str()))).args(args).stdin(Stdio::null()).output().unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}; stderr: {}", output.stdout, stderr(output)))
}

/// The scenario both transports must answer alike: add a job, run it and
/// wait, read its record and logs, refuse what should be refused. Returns
/// the outputs a script would compare.
fn scenario(wfrun: &dyn Fn(&[&str]) -> Output) -> Vec<Value> {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = wfrun(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        out
    };
    ok(&["jobs", "add", "greet", "--bundle", hello, "--manual", "--input", r#"{"name":"remote"}"#]);
    let jobs = json(&ok(&["jobs", "list", "--json"]));
    assert_eq!(jobs["result"][0]["name"], "greet", "{jobs}");

    let waited = ok(&["trigger", "greet", "--wait"]);
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), r#"{"greeting":"Hello, remote!"}"#);
    let record = json(&ok(&["trigger", "greet", "--wait", "--json", "--input", r#"{"name":"json"}"#]));
    assert_eq!(record["status"], "succeeded", "{record}");
    let run_id = record["run_id"].as_str().unwrap().to_owned();

    let list = json(&ok(&["runs", "list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list[0]["run_id"], run_id.as_str());
    let show = json(&ok(&["runs", "show", &run_id, "--json"]));
    assert_eq!(show["output"], r#"{"greeting":"Hello, json!"}"#);
    let logs = json(&ok(&["runs", "logs", &run_id, "--json"]));
    let again = ok(&["runs", "wait", &run_id]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), r#"{"greeting":"Hello, json!"}"#);

    // Refusals: the same exit status either way.
    assert_eq!(wfrun(&["cancel", "no-such-run"]).status.code(), Some(6));
    assert_eq!(wfrun(&["runs", "show", "no-such-run"]).status.code(), Some(6));
    assert_eq!(wfrun(&["runs", "wait", "no-such-run"]).status.code(), Some(6));
    ok(&["jobs", "pause", "greet"]);
    let paused = json(&wfrun(&["trigger", "greet", "--json"]));
    assert_eq!(paused["error"]["code"], "paused", "{paused}");
    let status = json(&ok(&["status", "--json"]));
    assert_eq!(status["result"]["jobs"][0]["paused"], true, "{status}");
    // What is the same on both sides: the record, its logs, the refusal.
    vec![show, logs, paused["error"].clone()]
}

/// The fields of a run record that differ between two daemons.
fn comparable(mut value: Value) -> Value {
    if let Some(record) = value.as_object_mut() {
        for key in ["run_id", "created_at", "finished_at", "duration_ms", "transitions", "bundle_path"] {
            record.remove(key);
        }
        if let Some(nodes) = record.get_mut("nodes").and_then(Value::as_array_mut) {
            for node in nodes {
                for key in ["duration_ms", "started_at", "finished_at"] {
                    node.as_object_mut().map(|n| n.remove(key));
                }
            }
        }
    }
    value
}

#[test]
fn the_cli_drives_a_remote_daemon_over_tls_exactly_as_the_local_one() {
    let local = DaemonProcess::start("");
    let state = local.state();
    let local_answers = scenario(&|args| {
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        client(&all, &[])
    });

    let remote = Remote::start("");
    let flags = remote.flags();
    let remote_answers = scenario(&|args| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        // No state directory of the daemon's: everything goes over HTTPS.
        client(&all, &[])
    });

    let (local_show, remote_show) = (comparable(local_answers[0].clone()), comparable(remote_answers[0].clone()));
    assert_eq!(local_show, remote_show);
    assert_eq!(local_answers[1..], remote_answers[1..]);
}

#[test]
fn the_remote_daemon_checks_the_token_and_the_client_checks_the_certificate() {
    let remote = Remote::start("");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-daemon-token-but-long-enough").unwrap();
    let ca = remote.ca.to_str().unwrap();
    let status = |token: &Path, ca: Option<&str>| {
        let mut args = vec!["status", "--json", "--remote", &remote.url, "--token-file", token.to_str().unwrap()];
        if let Some(ca) = ca {
            args.extend(["--ca-file", ca]);
        }
        client(&args, &[]).status.code()
    };
    assert_eq!(status(&remote.token, Some(ca)), Some(0));
    // A wrong token is refused by the daemon (6) ...
    assert_eq!(status(&wrong, Some(ca)), Some(6));
    // ... and without the CA the client does not trust the daemon (1):
    // the token never leaves.
    assert_eq!(status(&remote.token, None), Some(1));
    // Plain HTTP to the TLS listener gets no answer.
    let plain = remote.url.replace("https://", "http://");
    let args = ["status", "--remote", &plain, "--token-file", remote.token.to_str().unwrap()];
    assert_eq!(client(&args, &[]).status.code(), Some(1));
    // A client refuses to send a token in plain HTTP off the loopback, and
    // says so without connecting (2: the flags are unusable).
    let args = ["status", "--remote", "http://192.0.2.1:8788", "--token-file", remote.token.to_str().unwrap()];
    assert_eq!(client(&args, &[]).status.code(), Some(2));
    // No token file: a usage error.
    assert_eq!(client(&["status", "--remote", &remote.url], &[]).status.code(), Some(2));
}

#[test]
fn a_control_api_off_the_loopback_needs_tls_and_its_files_must_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = certificates(dir.path());
    for config in [
        format!("[control_http]\nlisten = \"0.0.0.0:{}\"\n", free_port()),
        format!("[control_http]\nlisten = \"127.0.0.1:{}\"\ntls_cert = {}\n", free_port(), toml_path(&cert)),
    ] {
        let mut daemon = DaemonProcess::spawn(tempfile::tempdir().unwrap(), &config, &[]);
        let code = daemon.wait(Duration::from_secs(30));
        assert!(code.is_some_and(|c| c != 0), "{config}: the daemon should refuse to start; log:\n{}", daemon.log());
        assert!(!daemon.state().join("wfrun.sock").exists(), "{config}: it must not serve");
    }
}

#[test]
fn trigger_wait_follows_retries_and_exits_as_exec_would() {
    let hostile = guest("hostile");
    let job = guest("hostile-job");
    let daemon = DaemonProcess::start(&format!(
        "[retry]\ninitial_backoff = \"100ms\"\nmax_attempts = 2\n\
         [jobs.failing]\nbundle = {}\ninput = '{{\"mode\": \"fail\"}}'\n\
         [jobs.exits]\nbundle = {}\nargs = [\"exit\"]\n\
         [jobs.prints]\nbundle = {}\n",
        toml_path(&hostile),
        toml_path(&job),
        toml_path(&guest("hello-job"))
    ));
    let state = daemon.state();
    let wfrun = |args: &[&str]| {
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        client(&all, &[])
    };
    // A node error, retried once: the wait ends with the retry's record
    // and the status `exec` gives a node error (3).
    let failed = wfrun(&["trigger", "failing", "--wait", "--json"]);
    assert_eq!(failed.status.code(), Some(3), "{}", stderr(&failed));
    let last = json(&failed);
    assert_eq!((last["status"].as_str(), last["error_code"].as_str()), (Some("failed"), Some("node_error")));
    let runs = daemon.runs();
    assert_eq!(runs.len(), 2, "one run and its retry: {runs:?}");
    let (retry, first) = (&runs[0], &runs[1]);
    assert_eq!(last["run_id"], retry.run_id.as_str(), "the wait ends on the last attempt");
    assert_eq!(first.retried_as.as_deref(), Some(retry.run_id.as_str()));
    assert_eq!(retry.retried_as, None);

    // A job's own exit status passes through, as with exec.
    let exits = wfrun(&["trigger", "exits", "--wait"]);
    assert_eq!(exits.status.code(), Some(1), "{}", stderr(&exits));
    // A job's output is what it printed.
    let prints = wfrun(&["trigger", "prints", "--wait"]);
    assert_eq!(prints.status.code(), Some(0), "{}", stderr(&prints));
    assert_eq!(String::from_utf8_lossy(&prints.stdout), "Hello, world!\n");
    // --wait takes one run.
    assert_eq!(wfrun(&["trigger", "prints", "--wait", "--count", "2"]).status.code(), Some(2));
}

#[test]
fn a_client_profile_names_the_daemon_and_flags_override_it() {
    let remote = Remote::start("");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    // Relative paths are read against the config file's directory.
    std::fs::copy(&remote.token, dir.path().join("lab.token")).unwrap();
    std::fs::write(
        &config,
        format!(
            "default_profile = \"lab\"\n[profiles.lab]\nurl = \"{}\"\ntoken_file = \"lab.token\"\nca_file = {}\n\
             [profiles.broken]\nurl = \"https://127.0.0.1:{}\"\ntoken_file = \"lab.token\"\n",
            remote.url,
            toml_path(&remote.ca),
            free_port()
        ),
    )
    .unwrap();
    let with_config = |args: &[&str], extra: &[(&str, &Path)]| {
        // A state directory with no daemon: only the profile can answer.
        let mut env = vec![("WFRUN_CLIENT_CONFIG", config.as_path()), ("WFRUN_DIR", dir.path())];
        env.extend_from_slice(extra);
        client(args, &env)
    };
    // The default profile answers, for control commands and the history.
    assert_eq!(with_config(&["status"], &[]).status.code(), Some(0));
    let runs = with_config(&["runs", "list", "--json"], &[]);
    assert_eq!((runs.status.code(), json(&runs)), (Some(0), Value::Array(vec![])));
    // A named profile beats the default (nothing listens there: 1) ...
    assert_eq!(with_config(&["status", "--profile", "broken"], &[]).status.code(), Some(1));
    assert_eq!(with_config(&["status"], &[("WFRUN_PROFILE", Path::new("broken"))]).status.code(), Some(1));
    // ... --remote beats any profile ...
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-daemon-token-but-long-enough").unwrap();
    let flags = remote.flags();
    let mut args: Vec<&str> = vec!["status", "--profile", "broken"];
    args.extend(flags.iter().map(String::as_str));
    assert_eq!(with_config(&args, &[]).status.code(), Some(0));
    // ... and --token-file beats the profile's token.
    assert_eq!(with_config(&["status", "--token-file", wrong.to_str().unwrap()], &[]).status.code(), Some(6));
    // An unknown profile is a usage error.
    assert_eq!(with_config(&["status", "--profile", "nope"], &[]).status.code(), Some(2));
    // An explicit --state-dir names a local daemon (none runs there: 1),
    // whatever the default profile says.
    let local = ["--state-dir", dir.path().to_str().unwrap(), "status"];
    assert_eq!(with_config(&local, &[]).status.code(), Some(1));
}

#[test]
fn completions_and_the_manual_cover_every_command() {
    let commands = ["exec", "runs", "jobs", "trigger", "status", "cancel", "release", "fleet", "completions"];
    for shell in ["bash", "zsh", "fish"] {
        let out = client(&["completions", shell], &[]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in commands {
            assert!(script.contains(command), "{shell} completions lack {command}");
        }
        // fish spells a long flag `-l remote`.
        assert!(script.contains("--remote") || script.contains("-l remote"), "{shell} completions lack --remote");
        // A subcommand's own flags, built only when asked for (`defer`).
        assert!(script.contains("max-parallel"), "{shell} completions lack exec's --max-parallel");
    }
    assert_eq!(client(&["completions", "tcsh"], &[]).status.code(), Some(2));
    // `wfrun --help` describes every subcommand, though their arguments
    // are built only when asked for.
    let help = client(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let listed: Vec<&str> =
        help.lines().skip_while(|l| !l.starts_with("Commands:")).skip(1).take_while(|l| !l.trim().is_empty()).collect();
    for command in commands {
        let line = listed.iter().find(|l| l.split_whitespace().next() == Some(command));
        let words = line.map_or(0, |l| l.split_whitespace().count());
        assert!(words > 1, "`wfrun --help` lists {command} without a description");
    }
    let page = client(&["man"], &[]);
    assert_eq!(page.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&page.stdout).starts_with(".ie"), "not roff");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(client(&["man", "--out-dir", dir.path().to_str().unwrap()], &[]).status.code(), Some(0));
    for command in ["wfrun.1", "wfrun-trigger.1", "wfrun-runs.1"] {
        assert!(dir.path().join(command).exists(), "no {command}");
    }
    let exec_page = std::fs::read_to_string(dir.path().join("wfrun-exec.1")).unwrap();
    assert!(exec_page.contains(r"max\-parallel"), "wfrun-exec.1 lacks --max-parallel");
}

/// `GET path` on 127.0.0.1:`port` with `token`: (status, body).
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Parses the OpenMetrics text format strictly enough to catch a broken
/// exposition: every sample belongs to a family declared by `# TYPE`
/// before it, every value is a number, and `# EOF` ends it. Returns
/// (sample name with its labels as written, value).
fn parse_openmetrics(text: &str) -> Vec<(String, f64)> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "text after # EOF: {line:?}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram", "info", "unknown"].contains(&kind), "{line}");
            families.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = families.iter().find(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|s| name == format!("{family}{s}"))
        });
        assert!(family.is_some(), "sample {name} of no declared family");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "labels {labels:?}");
        }
        samples.push((series.to_owned(), value));
    }
    assert!(ended, "no # EOF");
    samples
}

#[test]
fn the_daemon_exposes_its_metrics_to_a_scraper_behind_its_token() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let token = "a-metrics-token-of-at-least-32-characters";
    std::fs::write(dir.path().join("control.token"), token).unwrap();
    let daemon = DaemonProcess::start_in(
        tempfile::tempdir().unwrap(),
        &format!(
            "[control_http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {}\n\
             [retry]\ninitial_backoff = \"100ms\"\nmax_attempts = 2\n\
             [jobs.greet]\nbundle = {}\n[jobs.failing]\nbundle = {}\ninput = '{{\"mode\": \"fail\"}}'\n",
            toml_path(&dir.path().join("control.token")),
            toml_path(&guest("hello")),
            toml_path(&guest("hostile"))
        ),
    );
    assert!(wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    for (job, code) in [("greet", 0), ("failing", 3)] {
        let out = daemon.wfrun(&["trigger", job, "--wait"]);
        assert_eq!(out.status.code(), Some(code), "{job}: {}", stderr(&out));
    }
    assert_eq!(get(port, "/metrics", None).0, 401);
    assert_eq!(get(port, "/metrics", Some("a-wrong-token-of-at-least-32-characters")).0, 401);
    let (status, body) = get(port, "/metrics", Some(token));
    assert_eq!(status, 200, "{body}");
    let samples = parse_openmetrics(&body);
    let value = |series: &str| {
        samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(value(r#"wfrun_runs_total{job="greet",status="succeeded"}"#), 1.0);
    assert_eq!(value(r#"wfrun_runs_total{job="failing",status="failed"}"#), 2.0);
    assert_eq!(value(r#"wfrun_retries_total{job="failing"}"#), 1.0);
    assert_eq!(value(r#"wfrun_run_duration_seconds_count{job="greet"}"#), 1.0);
    assert!(value(r#"wfrun_fuel_consumed_total{job="greet"}"#) > 0.0);
    assert!(value(r#"wfrun_run_peak_memory_bytes{job="greet"}"#) > 0.0);
    // Two failures in a row with max_attempts = 2 pause the job.
    assert_eq!(value(r#"wfrun_job_paused{job="failing"}"#), 1.0);
    assert_eq!(value(r#"wfrun_job_paused{job="greet"}"#), 0.0);
    assert_eq!(value("wfrun_runs_in_flight"), 0.0);

    // A removed job's series go with it.
    assert_eq!(daemon.wfrun(&["jobs", "remove", "greet"]).status.code(), Some(0));
    let (_, body) = get(port, "/metrics", Some(token));
    let samples = parse_openmetrics(&body);
    assert!(!samples.iter().any(|(series, _)| series.contains(r#"job="greet""#)), "{body}");
    assert!(samples.iter().any(|(series, _)| series.contains(r#"job="failing""#)));
}

#[test]
fn scripts_get_json_from_keygen_pack_sign_and_cache_clear() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let wfrun = |args: &[&str]| {
        let mut all = vec!["--state-dir", state.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = client(&all, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        json(&out)
    };
    let keys = dir.path().join("keys");
    let keygen = wfrun(&["keygen", "--out", keys.to_str().unwrap(), "--json"]);
    let key_id = keygen["key_id"].as_str().unwrap().to_owned();
    assert!(Path::new(keygen["secret_key"].as_str().unwrap()).is_file());

    let manifest = dir.path().join("workflow.toml");
    std::fs::write(
        &manifest,
        format!("name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = {}\n", toml_path(&guest("hello"))),
    )
    .unwrap();
    let bundle = dir.path().join("w.wasm");
    let packed = wfrun(&["pack", manifest.to_str().unwrap(), "-o", bundle.to_str().unwrap(), "--json"]);
    let bytes = std::fs::read(&bundle).unwrap();
    assert_eq!(packed["bytes"], bytes.len());
    let inspect = wfrun(&["inspect", bundle.to_str().unwrap(), "--json"]);
    assert_eq!(packed["digest"], inspect["digest"], "{inspect}");

    let signed = wfrun(&["sign", bundle.to_str().unwrap(), "--key", keygen["secret_key"].as_str().unwrap(), "--json"]);
    assert_eq!(signed["key_id"], key_id.as_str());
    let verified =
        wfrun(&["verify", bundle.to_str().unwrap(), "--trust", keygen["public_key"].as_str().unwrap(), "--json"]);
    assert_eq!(verified["key_id"], key_id.as_str(), "{verified}");

    let cleared = wfrun(&["cache", "clear", "--json"]);
    assert!(cleared["removed"].as_u64().is_some(), "{cleared}");
}
