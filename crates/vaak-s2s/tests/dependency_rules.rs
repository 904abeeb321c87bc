//! vaak-s2s sits below the server and must never pull in the data-making crates
//! (vaak-cascade, vaak-teachers): the model would then drag hub clients and teacher models
//! into every deployment.

#[test]
fn vaak_s2s_depends_only_on_allowed_crates() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("read Cargo.toml");
    let allowed = [
        "vaak-nn",
        "vaak-audio",
        "vaak-codec",
        "vaak-data",
        "candle-core",
        "candle-nn",
        "serde",
        "serde_json",
        // The training config is YAML (as vaak-codec's).
        "serde_yaml",
        "thiserror",
        "tracing",
        "rand",
        "rand_chacha",
        "rand_distr",
        "tempfile",
    ];
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if !section.contains("dependencies") || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap().trim();
        assert!(
            allowed.contains(&name),
            "{section}: dependency {name:?} is not allowed for vaak-s2s"
        );
    }
    for banned in ["vaak-cascade", "vaak-teachers"] {
        assert!(
            !manifest.contains(banned),
            "vaak-s2s must not depend on {banned}"
        );
    }
}
