//! vaak-bench: `vaak bench ...`, measured, not asserted. Each benchmark prints a table, writes
//! JSON, and runs a peer implementation (PyTorch and friends from the fixture venv, or
//! candle-transformers) on the same inputs in the same run, so that the reported ratio compares
//! like with like on this machine.
//!
//! The `vaak` binary mounts [`BenchCommand`] as its `bench` subcommand and calls [`run`]. The
//! Python peers live in `crates/vaak-bench/peers/` and are embedded in the binary, so the
//! benchmarks work from any directory; only the interpreter is looked up (see [`peer`]).
//!
//! `bench codec` measures each thread count in a child process: it re-runs the current
//! executable as `<exe> bench codec --child-out ...` ([`CODEC_CHILD_COMMAND`]), so a binary
//! that embeds this crate must route that command line back to [`run`].

mod audio;
mod cascade;
mod codec;
mod data;
mod encodec;
mod mt;
pub mod peer;
pub mod report;
mod s2s;
mod serve;
mod train;
mod vad;
mod vc;

pub use audio::{speechlike, AudioBenchArgs};
pub use cascade::CascadeBenchArgs;
pub use codec::{CodecBenchArgs, CODEC_CHILD_COMMAND};
pub use data::DataBenchArgs;
pub use encodec::EncodecBenchArgs;
pub use mt::MtBenchArgs;
pub use s2s::S2sBenchArgs;
pub use serve::ServeBenchArgs;
pub use train::TrainBenchArgs;
pub use vad::VadBenchArgs;
pub use vc::VcBenchArgs;

use anyhow::Result;
use clap::Subcommand;

/// The benchmarks, as clap subcommands (`vaak bench <name> --help` documents each).
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode+resample, Whisper log-mel, Kaldi fbank and speechbrain Fbank throughput, against
    /// soundfile/torchaudio/librosa/transformers/speechbrain when the fixture venv is present.
    Audio(AudioBenchArgs),
    /// The whole teacher cascade over a sample manifest (espeak-ng speech + broken rows, tiny
    /// fixture teachers by default): samples/s, audio hours per hour, time per stage, the share
    /// inside model calls against orchestration, and peak memory.
    Cascade(CascadeBenchArgs),
    /// Codec streaming latency per frame (mean/p50/p95) and real-time factor at 1 and 2
    /// threads: vaak's mimi and vaak-16k against candle-transformers' Mimi and transformers'
    /// MimiModel on the same random full-size weights; code agreement; vaak-16k frame rates.
    Codec(CodecBenchArgs),
    /// EnCodec 24 kHz whole-clip encode (random full-size weights): one clip per call and a
    /// padded batch, at 1 and 2 threads, against transformers' EncodecModel on the same weights.
    Encodec(EncodecBenchArgs),
    /// OpenVoice V2 tone-colour conversion: real-time factor at 1, 8 and 32 clips for the tiny
    /// fixture and a random full-size converter, against openvoice-cli (PyTorch) on the same
    /// weights.
    Vc(VcBenchArgs),
    /// M2M-100 generation (sentences/s, tokens/s) at batch 1/8/32 on the tiny fixture and a
    /// random mid-size model, against transformers' generate() on the same weights.
    Mt(MtBenchArgs),
    /// Corpus pipeline stages (manifest, verify, prepare to 16 kHz FLAC) in hours of audio per
    /// minute on a synthetic LibriSpeech-layout corpus, against lhotse at the same --jobs.
    Data(DataBenchArgs),
    /// The voice server under load: N concurrent loopback sessions speaking in real time with
    /// pauses and barge-ins; p50/p95/p99 end of speech -> first reply audio, server real-time
    /// factor, the most sessions held in real time, a soak (--minutes) with RSS and p95 drift.
    Serve(ServeBenchArgs),
    /// The server's VAD (earshot) against the Python silero-vad reference on a labelled
    /// espeak-ng set with silence and noise gaps: frame accuracy, precision, recall, F1.
    Vad(VadBenchArgs),
    /// The S2S model (random small and base): first-frame latency, decoder step p50/p95 at
    /// batch 1/8/32/128 and the training step at 1 and 2 threads, against an eager PyTorch
    /// implementation on the same weights after a logits parity check.
    S2s(S2sBenchArgs),
    /// Codec training: steps/s and peak memory of vaak's trainer (bundled vaak-16k config) at
    /// batch 8 and 32, f32 and bf16, reconstruction losses only and with the adversarial
    /// stage, against a PyTorch peer of the same model, losses and optimizer; a phase profile.
    Train(TrainBenchArgs),
}

/// Runs one benchmark: prints its table on stdout, progress on stderr, and writes its JSON.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Audio(args) => audio::run(args),
        BenchCommand::Cascade(args) => cascade::run(args),
        BenchCommand::Codec(args) => codec::run(args),
        BenchCommand::Encodec(args) => encodec::run(args),
        BenchCommand::Vc(args) => vc::run(args),
        BenchCommand::Mt(args) => mt::run(args),
        BenchCommand::Data(args) => data::run(args),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Vad(args) => vad::run(args),
        BenchCommand::S2s(args) => s2s::run(args),
        BenchCommand::Train(args) => train::run(args),
    }
}
