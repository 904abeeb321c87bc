//! `vaak data manifest` (a downloaded corpus to a corpus manifest) and `vaak data verify`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vaak_data::corpus::{read_corpus, write_corpus};
use vaak_data::recipes::{build_manifest, Options, Progress, Recipe};
use vaak_data::verify::{render_table, verify, VerifyOptions};

fn recipe_help() -> String {
    let mut s = String::from("Recipes (RECIPE, then the layout expected under DIR):\n");
    for r in Recipe::ALL {
        s.push_str(&format!("\n  {:<15} {}", r.name(), r.layout()));
    }
    s.push_str(
        "\n\nAudio paths in the manifest are relative to DIR: give DIR as --data-root to `vaak data \
         verify` (or write the manifest into DIR). Durations come from the audio headers. Lines \
         that cannot be used are skipped and listed as FILE:LINE: REASON.",
    );
    s
}

#[derive(Args)]
#[command(after_long_help = recipe_help())]
pub struct ManifestArgs {
    /// The corpus: librispeech, common_voice, vctk, ljspeech, openslr66, mucs (openslr103),
    /// kathbath, indicvoices, indictts, golos, peoples_speech (see --help for the layouts).
    recipe: String,
    /// The corpus as downloaded and unpacked (golos / peoples_speech: a directory of CSVs, or
    /// one CSV).
    dir: PathBuf,
    /// Output manifest: JSON Lines, or the cascade's CSV if it ends in .csv.
    #[arg(long)]
    out: PathBuf,
    /// Language code where the corpus does not say (Common Voice without a locale column,
    /// IndicTTS, OpenSLR 66 for SLR 63-65, ...).
    #[arg(long)]
    lang: Option<String>,
    /// Also write the cascade's CSV layout next to the JSONL (OUT with extension .csv).
    #[arg(long)]
    csv: bool,
    /// Threads for reading audio headers (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// A corpus manifest (JSONL or CSV).
    manifest: PathBuf,
    /// Directory the audio paths are relative to (default: the manifest's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Also write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit non-zero when any error is found.
    #[arg(long)]
    strict: bool,
    /// Expected sample rate in Hz: other rates become errors (else warnings against the most
    /// common rate).
    #[arg(long)]
    rate: Option<u32>,
    /// Rows with more than one channel are errors (else warnings).
    #[arg(long)]
    mono: bool,
    /// Allowed difference between manifest, header and decoded durations, in seconds.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Threads for decoding (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// Entries shown per list in the table (all of them are in --json).
    #[arg(long, default_value_t = 20)]
    max_list: usize,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn jobs(j: Option<usize>) -> usize {
    j.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1)
}

fn progress_bar(hidden: bool, what: &'static str) -> (ProgressBar, Option<Progress>) {
    if hidden {
        return (ProgressBar::hidden(), None);
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what);
    let p = pb.clone();
    let cb: Progress = Arc::new(move |done, total| {
        p.set_length(total);
        p.set_position(done);
    });
    (pb, Some(cb))
}

pub fn manifest(a: ManifestArgs) -> Result<()> {
    let recipe: Recipe = a.recipe.parse()?;
    let (pb, progress) = progress_bar(a.no_progress, "scanning audio");
    let opts = Options {
        lang: a.lang.clone(),
        jobs: jobs(a.jobs),
        progress,
    };
    let t0 = std::time::Instant::now();
    let rep = build_manifest(recipe, &a.dir, &opts)?;
    pb.finish_and_clear();
    if rep.rows.is_empty() {
        for s in rep.skipped.iter().take(20) {
            eprintln!("  skipped {s}");
        }
        anyhow::bail!(
            "{} recipe found no usable utterance in {} ({} entries, all {} skipped); nothing written",
            recipe,
            a.dir.display(),
            rep.counts.entries,
            rep.counts.skipped
        );
    }
    write_corpus(&a.out, &rep.rows)
        .with_context(|| format!("writing the manifest {}", a.out.display()))?;
    let mut written = vec![a.out.display().to_string()];
    if a.csv && !is_csv(&a.out) {
        let csv = a.out.with_extension("csv");
        write_corpus(&csv, &rep.rows)
            .with_context(|| format!("writing the CSV manifest {}", csv.display()))?;
        written.push(csv.display().to_string());
    }
    let c = &rep.counts;
    println!(
        "{recipe}: {} rows, {:.3} h, from {} index file(s) with {} entries; {} skipped; {:.1} s",
        c.rows,
        c.hours,
        c.index_files,
        c.entries,
        c.skipped,
        t0.elapsed().as_secs_f64()
    );
    if !rep.skipped.is_empty() {
        println!("skipped (FILE:LINE: REASON):");
        for s in rep.skipped.iter().take(50) {
            println!("  {s}");
        }
        if rep.skipped.len() > 50 {
            println!("  ... {} more", rep.skipped.len() - 50);
        }
    }
    println!(
        "wrote {}; audio paths are relative to {} (pass it as --data-root)",
        written.join(" and "),
        a.dir.display()
    );
    Ok(())
}

fn is_csv(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

pub fn verify_cmd(a: VerifyArgs) -> Result<()> {
    let m = read_corpus(&a.manifest)
        .with_context(|| format!("reading the manifest {}", a.manifest.display()))?;
    let root = a.data_root.clone().unwrap_or_else(|| {
        a.manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    });
    anyhow::ensure!(
        root.is_dir(),
        "the data root {} is not a directory (give the corpus directory with --data-root)",
        root.display()
    );
    let (pb, progress) = progress_bar(a.no_progress, "decoding");
    let opts = VerifyOptions {
        jobs: jobs(a.jobs),
        tolerance_s: a.tolerance,
        expected_rate: a.rate,
        require_mono: a.mono,
        progress,
    };
    let rep = verify(&m, &root, &opts);
    pb.finish_and_clear();
    print!("{}", render_table(&rep, a.max_list));
    if let Some(j) = &a.json {
        let text = serde_json::to_string_pretty(&rep)?;
        std::fs::write(j, text).with_context(|| format!("writing {}", j.display()))?;
    }
    if a.strict && rep.has_errors() {
        anyhow::bail!(
            "verify found {} error(s) in {} (listed above)",
            rep.errors,
            a.manifest.display()
        );
    }
    Ok(())
}
