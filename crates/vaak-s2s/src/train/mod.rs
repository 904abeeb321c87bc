//! Training the S2S model: the YAML config ([`S2sTrainConfig`], curriculum [`Stage`]), the
//! examples and the code cache ([`data`]), and [`S2sTrainer`], which runs through vaak-nn's
//! shared training run ([`vaak_nn::train::run::run`]).

pub mod baselines;
pub mod config;
pub mod data;
pub mod trainer;

pub use baselines::{
    copy_accuracy, model_accuracy, unigram_accuracy, unigram_codes, CodebookAccuracy,
};
pub use config::{
    CondConfig, DataConfig, LossConfig, OptimConfig, S2sTrainConfig, Stage, TextKind,
};
pub use data::{
    build_clip_examples, build_pair_examples, parallel_pairs, prosody, read_codes, read_speaker,
    write_codes, AudioTokenizer, BuildReport, CodeCache, PairFiles, Prosody, S2sExample,
};
pub use trainer::{ExportInfo, S2sTrainer, StepMetrics, ValMetrics, CODEC_FILE, EXPORT_VOICES};
