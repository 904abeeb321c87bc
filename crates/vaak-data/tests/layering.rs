//! The dependency rule between workspace crates, checked on `cargo metadata`.
//!
//! Here, in the lowest crate with tests, because it is the crate the rule exists to protect:
//! formats must stay below the models and teachers. The table is the architecture; a new crate
//! must be added to it on purpose.

use std::process::Command;

use serde_json::Value;

/// How a crate may depend on a workspace crate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Allow {
    No,
    Yes,
    /// Only as an `optional = true` normal dependency (a feature turns it on).
    Optional,
}

/// The workspace crates `krate` may use in normal and build dependencies. `None`: not in the
/// table.
fn allowed(krate: &str, dep: &str) -> Option<Allow> {
    let yes = |list: &[&str]| {
        if list.contains(&dep) {
            Allow::Yes
        } else {
            Allow::No
        }
    };
    Some(match krate {
        "vaak-audio" | "vaak-nn" => yes(&[]),
        "vaak-data" => yes(&["vaak-audio", "vaak-nn"]),
        "vaak-codec" | "vaak-teachers" => yes(&["vaak-audio", "vaak-nn", "vaak-data"]),
        "vaak-cascade" => yes(&[
            "vaak-audio",
            "vaak-nn",
            "vaak-data",
            "vaak-codec",
            "vaak-teachers",
        ]),
        "vaak-s2s" => yes(&["vaak-audio", "vaak-nn", "vaak-codec", "vaak-data"]),
        "vaak-server" if dep == "vaak-teachers" => Allow::Optional,
        "vaak-server" => yes(&[
            "vaak-audio",
            "vaak-nn",
            "vaak-codec",
            "vaak-data",
            "vaak-s2s",
        ]),
        "vaak-bench" => {
            if dep == "vaak-cli" {
                Allow::No
            } else {
                Allow::Yes
            }
        }
        "vaak-cli" => Allow::Yes,
        _ => return None,
    })
}

/// Dev-dependencies are freer (tests may use anything), but the shipped speech-to-speech
/// crates must not even test through the cascade: their tests would then need the teachers.
fn dev_allowed(krate: &str, dep: &str) -> bool {
    !(matches!(krate, "vaak-s2s" | "vaak-server") && dep == "vaak-cascade")
}

/// Every violation of the rule in `cargo metadata --format-version 1 --no-deps` output.
fn violations(metadata: &Value) -> Vec<String> {
    let packages = metadata["packages"].as_array().expect("packages array");
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut out = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        if allowed(name, name).is_none() {
            out.push(format!(
                "{name}: unknown workspace crate; add it to the table in \
                 crates/vaak-data/tests/layering.rs"
            ));
            continue;
        }
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or("?");
            if !members.contains(&dep) || dep == name {
                continue;
            }
            let kind = d["kind"].as_str().unwrap_or("normal");
            let optional = d["optional"].as_bool().unwrap_or(false);
            let ok = match kind {
                "dev" => dev_allowed(name, dep),
                _ => match allowed(name, dep).expect("checked above") {
                    Allow::Yes => true,
                    Allow::Optional => optional && kind == "normal",
                    Allow::No => false,
                },
            };
            if !ok {
                let how = if optional { "optional " } else { "" };
                out.push(format!(
                    "{name} must not depend on {dep} ({how}{kind} dependency)"
                ));
            }
        }
    }
    out
}

fn workspace_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
            manifest,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn workspace_crates_depend_only_downwards() {
    let meta = workspace_metadata();
    let names: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"vaak-data") && names.contains(&"vaak-cli"),
        "{names:?}"
    );
    let v = violations(&meta);
    assert!(v.is_empty(), "dependency rule broken:\n{}", v.join("\n"));
}

/// A package entry of hand-made metadata: `(dep, kind, optional)`.
fn pkg(name: &str, deps: &[(&str, &str, bool)]) -> Value {
    let deps: Vec<Value> = deps
        .iter()
        .map(|(d, kind, optional)| {
            let kind = if *kind == "normal" {
                Value::Null
            } else {
                Value::from(*kind)
            };
            serde_json::json!({"name": d, "kind": kind, "optional": optional})
        })
        .collect();
    serde_json::json!({"name": name, "dependencies": deps})
}

#[test]
fn the_check_catches_upward_edges_unknown_crates_and_dev_cascade() {
    let meta = serde_json::json!({"packages": [
        pkg("vaak-audio", &[("serde", "normal", false)]),
        pkg("vaak-nn", &[]),
        pkg("vaak-teachers", &[]),
        pkg("vaak-cascade", &[]),
        pkg("vaak-codec", &[]),
        pkg("vaak-data", &[
            ("vaak-audio", "normal", false),
            ("vaak-teachers", "normal", false),
            ("vaak-cascade", "dev", false),
        ]),
        pkg("vaak-s2s", &[("vaak-cascade", "dev", false), ("vaak-codec", "build", false)]),
        pkg("vaak-server", &[
            ("vaak-teachers", "normal", true),
            ("vaak-s2s", "normal", false),
        ]),
        pkg("vaak-server2", &[]),
    ]});
    let v = violations(&meta);
    assert_eq!(v.len(), 3, "{v:#?}");
    assert!(
        v[0].contains("vaak-data must not depend on vaak-teachers"),
        "{}",
        v[0]
    );
    assert!(
        v[1].contains("vaak-s2s must not depend on vaak-cascade (dev"),
        "{}",
        v[1]
    );
    assert!(
        v[2].contains("vaak-server2") && v[2].contains("add it to the table"),
        "{}",
        v[2]
    );

    // The teachers are allowed in the server only as an optional dependency.
    let meta = serde_json::json!({"packages": [
        pkg("vaak-teachers", &[]),
        pkg("vaak-server", &[("vaak-teachers", "normal", false)]),
        pkg("vaak-bench", &[("vaak-cli", "normal", false)]),
        pkg("vaak-cli", &[]),
    ]});
    let v = violations(&meta);
    assert_eq!(v.len(), 2, "{v:#?}");
    assert!(v[0].contains("vaak-server must not depend on vaak-teachers"));
    assert!(v[1].contains("vaak-bench must not depend on vaak-cli"));
}
