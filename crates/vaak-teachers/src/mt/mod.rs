//! Machine translation teachers (the cascade's MT stage), behind [`crate::Translator`].
//!
//! - [`OpenAiTranslator`]: any OpenAI-compatible chat-completions server (OpenAI's
//!   `gpt-4o-mini`, or a local vLLM / Ollama / llama.cpp server), over blocking HTTP with bounded
//!   concurrency, retries and a fixed, hashed prompt.
//!
//! - [`loopback::LoopbackChatServer`]: a tagging chat-completions server on 127.0.0.1 for tests
//!   and `vaak bench cascade` (not a translator).

pub mod generate;
pub mod local;
pub mod loopback;
pub mod m2m100;
pub mod marian;
pub mod openai;
pub mod spm;
pub mod tokenizer;

pub use openai::{
    prompt_hash, system_prompt, BackoffConfig, OpenAiConfig, OpenAiTranslator, PROMPT_VERSION,
    SYSTEM_PROMPT_TEMPLATE,
};
