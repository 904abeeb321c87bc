//! `vaak`: the command line of the vaak speech-to-speech system.
//!
//! Thin by design: parse flags, load config, call the libraries. Every subcommand listed here
//! is implemented; `vaak serve` runs the voice server. The benchmarks live in
//! `vaak-bench`; `vaak bench` mounts its subcommands.

mod audio;
mod cascade;
mod check;
mod codec;
mod data;
mod data_manifest;
mod data_prepare;
mod info;
mod s2s;
mod serve;
mod train;
mod train_s2s;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vaak",
    version,
    about = "vaak: real-time speech-to-speech AI (audio tools, benchmarks)",
    long_about = "vaak builds and serves speech-to-speech models: a teacher cascade makes \
        parallel data, vaak trains a streaming codec and S2S transformer on it, and a streaming \
        voice server runs them. This build carries the audio core, the teacher cascade, the \
        codec family, S2S training and inference (`train s2s`, `s2s translate|reply`) and their \
        benchmarks; each subcommand below is implemented and has its own --help.",
    propagate_version = true
)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The streaming voice server and its browser client (http://127.0.0.1:8998/): echo,
    /// translate and converse, with VAD turn-taking and barge-in.
    Serve(Box<serve::ServeArgs>),
    /// System check: starts the server on loopback and checks codec, model, voices, context,
    /// barge-in and end-to-end latency; a pass/fail table, non-zero exit on failure.
    Check(check::CheckArgs),
    /// Print the build: version, enabled features, candle version, CPU capabilities and the
    /// accelerators this binary can see.
    Info(info::InfoArgs),
    /// Audio tools: probe headers, convert/resample, compute features.
    #[command(subcommand)]
    Audio(audio::AudioCommand),
    /// Teacher cascade: turn speech manifests into a parallel speech-to-speech dataset
    /// (ASR, translation, speaker embedding, TTS, codec tokens), sharded and resumable.
    Cascade(Box<cascade::CascadeArgs>),
    /// Neural codec: encode audio to tokens, decode tokens to audio, round-trip with SNR.
    #[command(subcommand)]
    Codec(codec::CodecCommand),
    /// Benchmarks: print a table, write JSON, and compare against a peer in the same run.
    #[command(subcommand)]
    Bench(vaak_bench::BenchCommand),
    /// Training: `vaak train codec` trains vaak's streaming codec, `vaak train s2s` the
    /// speech-to-speech model (stage by stage).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Speech-to-speech with a trained model: `translate` and `reply` (audio in, audio out).
    #[command(subcommand)]
    S2s(s2s::S2sCommand),
    /// Dataset tools: a seeded synthetic speech corpus (`data synth`), corpus manifests from
    /// downloaded corpora (`data manifest`) and their checks (`data verify`).
    #[command(subcommand)]
    Data(data::DataCommand),
}

/// An error prints as `Error: ...` and its `Caused by:` lines, with exit status 1.
fn main() -> Result<()> {
    // A user error (a missing file, a bad value) is reported by its message and causes, never
    // with a stack backtrace: RUST_LIB_BACKTRACE=0 stops errors (anyhow's, candle's) capturing
    // one whatever RUST_BACKTRACE says, while a panic still prints one under RUST_BACKTRACE=1
    // (the panic hook reads only RUST_BACKTRACE). Set before any thread starts.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    park_idle_candle_workers();
    keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Check(args) => check::run(args),
        Command::Info(args) => info::run(args),
        Command::Audio(cmd) => audio::run(cmd),
        Command::Cascade(args) => cascade::run(*args),
        Command::Codec(cmd) => codec::run(cmd),
        Command::Bench(cmd) => vaak_bench::run(cmd),
        Command::Train(cmd) => train::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::S2s(cmd) => s2s::run(cmd),
    }
}

/// candle's CPU pool for large elementwise ops (`CANDLE_NUM_THREADS`, separate from the rayon
/// pool vaak's kernels use) keeps each worker spinning for 25,000 iterations after every op.
/// Between ops that is a core taken from the rayon pool or from other processes: a codec
/// training step at batch 8 on 2 cores used 534-542 ms of CPU for 385-398 ms of wall time,
/// and 412-422 ms of CPU for the same wall time with a 200-iteration spin (the worker then
/// parks until the next op wakes it). The user's own setting wins. Set before any thread starts.
fn park_idle_candle_workers() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "200");
    }
}

/// glibc hands every allocation over 128 KiB to a fresh `mmap` and unmaps it when freed, so
/// each conv layer's output (megabytes per clip) is paid again in page faults and zeroing on
/// every call: 16% of an EnCodec encode (`vaak bench encodec`). Serving such blocks from the
/// heap and keeping freed memory for the next call trades a resident high-water mark for that.
/// Environment overrides (`MALLOC_MMAP_THRESHOLD_`, ...) still win.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20; // glibc's ceiling on 64-bit
        const KEEP_ON_TRIM: libc::c_int = libc::c_int::MAX;
        let set_by_user = |name: &str| std::env::var_os(name).is_some();
        // SAFETY: mallopt only adjusts allocator parameters; it is called before any thread
        // starts, and a rejected value leaves glibc's default in place.
        unsafe {
            if !set_by_user("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            }
            if !set_by_user("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_ON_TRIM);
            }
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
