//! The import rules of `docs/architecture.md`, checked on the source.
//!
//! Every `crate::MODULE` a file of `runtime/src/` names (in a `use` or a
//! path) must be on its module's list below. The lists are the layering:
//! leaves import nothing of the crate, and each layer only what is below it,
//! so there is no import cycle. A new dependency between modules means
//! changing this table and the page together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the crate modules it may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("manifest", &[]),
    ("outcome", &[]),
    ("files", &[]),
    ("descriptors", &[]),
    ("units", &[]),
    ("limits", &["units"]),
    ("settings", &["limits", "units"]),
    ("egress", &["outcome", "files"]),
    ("bundle", &["manifest", "files", "outcome"]),
    ("sandbox", &["limits", "egress", "outcome", "files"]),
    ("store", &["manifest", "outcome", "files"]),
    ("workflow", &["bundle", "sandbox", "store", "manifest", "limits", "egress", "outcome", "units", "files"]),
    ("policy", &["workflow", "bundle", "limits", "manifest", "egress", "outcome", "units"]),
    ("runner", &["policy", "workflow", "bundle", "sandbox", "store", "outcome"]),
    ("release", &["bundle", "files", "manifest"]),
    ("sync", &["manifest", "egress", "files"]),
    ("report", &["store", "egress", "files"]),
    ("fleet", &["report", "store", "files", "descriptors"]),
    (
        "daemon",
        &[
            "runner",
            "sync",
            "report",
            "policy",
            "workflow",
            "bundle",
            "sandbox",
            "store",
            "manifest",
            "limits",
            "egress",
            "outcome",
            "units",
            "files",
            "settings",
            "descriptors",
        ],
    ),
    ("fuzzing", &["bundle", "workflow", "manifest", "daemon", "sandbox"]),
    (
        "cli",
        &[
            "daemon",
            "runner",
            "release",
            "sync",
            "report",
            "fleet",
            "policy",
            "workflow",
            "bundle",
            "sandbox",
            "store",
            "manifest",
            "limits",
            "egress",
            "outcome",
            "units",
            "files",
            "settings",
            "descriptors",
        ],
    ),
];

/// The crate modules `text` names: `crate::a::…` and `crate::{a, b::…}`.
/// Comments are skipped.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String =
                        item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every broken rule in the tree at `src`: (file, module it names).
fn violations(src: &Path) -> Vec<(String, String)> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        // The crate root, and binaries, which use the library by its name.
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push((relative.display().to_string(), format!("module `{module}` is not in the table")));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for name in imports(&text) {
            if name != module && !may.contains(&name.as_str()) {
                broken.push((relative.display().to_string(), name));
            }
        }
    }
    broken
}

#[test]
fn no_module_imports_what_its_layer_may_not() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let broken = violations(&src);
    assert!(broken.is_empty(), "imports that break docs/architecture.md's rules: {broken:#?}");
}

#[test]
fn the_rule_check_sees_every_form_of_import() {
    let text = "use crate::store::Store;\nuse crate::{policy::Policy, daemon};\n// crate::cli in a comment\n\
                let x = crate::sandbox::Limits::default();";
    let names: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(names, ["daemon", "policy", "sandbox", "store"]);
    // A leaf that reached up would be caught.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("outcome.rs"), "use crate::store::Store;\n").unwrap();
    std::fs::create_dir(dir.path().join("bundle")).unwrap();
    std::fs::write(dir.path().join("bundle").join("mod.rs"), "use crate::workflow::Plan;\nuse crate::files::Mode;\n")
        .unwrap();
    let mut broken = violations(dir.path());
    broken.sort();
    assert_eq!(
        broken,
        [("bundle/mod.rs".to_owned(), "workflow".to_owned()), ("outcome.rs".to_owned(), "store".to_owned())]
    );
}
