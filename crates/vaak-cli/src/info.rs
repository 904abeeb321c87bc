//! `vaak info`: what this binary is and what it can run on.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Info {
    vaak_version: &'static str,
    git_commit: Option<&'static str>,
    profile: &'static str,
    features: Vec<&'static str>,
    candle_version: &'static str,
    cpu_threads: usize,
    cpu_capabilities: Vec<&'static str>,
    devices: Vec<String>,
}

/// The candle version this workspace pins; kept in step with the workspace `Cargo.toml`
/// (a unit test checks it against `Cargo.lock`).
pub const CANDLE_VERSION: &str = "0.11.1";

fn gather() -> Info {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "metal") {
        features.push("metal");
    }
    let mut caps = Vec::new();
    for (on, name) in [
        (candle_core::utils::with_avx(), "avx"),
        (candle_core::utils::with_f16c(), "f16c"),
        (candle_core::utils::with_neon(), "neon"),
        (candle_core::utils::with_simd128(), "simd128"),
        (candle_core::utils::has_mkl(), "mkl"),
        (candle_core::utils::has_accelerate(), "accelerate"),
    ] {
        if on {
            caps.push(name);
        }
    }
    Info {
        vaak_version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("VAAK_GIT_COMMIT"),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        features,
        candle_version: CANDLE_VERSION,
        cpu_threads: candle_core::utils::get_num_threads(),
        cpu_capabilities: caps,
        devices: devices(),
    }
}

/// Every device this binary can open, CPU first. Probing an accelerator that the build lacks
/// is skipped rather than reported as an error.
fn devices() -> Vec<String> {
    let mut out = vec!["cpu".to_string()];
    if candle_core::utils::cuda_is_available() {
        for i in 0..64 {
            match candle_core::Device::new_cuda(i) {
                Ok(_) => out.push(format!("cuda:{i}")),
                Err(_) => break,
            }
        }
    }
    if candle_core::utils::metal_is_available() && candle_core::Device::new_metal(0).is_ok() {
        out.push("metal:0".to_string());
    }
    out
}

pub fn run(args: InfoArgs) -> Result<()> {
    let info = gather();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("vaak {}", info.vaak_version);
    if let Some(c) = info.git_commit {
        println!("  commit           {c}");
    }
    println!("  build profile    {}", info.profile);
    let feats = if info.features.is_empty() {
        "none (CPU only)".to_string()
    } else {
        info.features.join(", ")
    };
    println!("  features         {feats}");
    println!("  candle           {}", info.candle_version);
    println!("  cpu threads      {}", info.cpu_threads);
    println!("  cpu capabilities {}", info.cpu_capabilities.join(", "));
    println!("  devices          {}", info.devices.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn candle_version_matches_lockfile() {
        let lock = include_str!("../../../Cargo.lock");
        let needle = format!(
            "name = \"candle-core\"\nversion = \"{}\"",
            super::CANDLE_VERSION
        );
        assert!(
            lock.contains(&needle),
            "Cargo.lock pins another candle-core"
        );
    }

    #[test]
    fn cpu_is_always_a_device() {
        let d = super::devices();
        assert_eq!(d[0], "cpu");
    }
}
