//! Machine translation teachers (the cascade's MT stage), behind [`crate::Translator`].
//!
//! - [`OpenAiTranslator`]: any OpenAI-compatible chat-completions server (OpenAI's
//!   `gpt-4o-mini`, or a local vLLM / Ollama / llama.cpp server), over blocking HTTP with bounded
//!   concurrency, retries and a fixed, hashed prompt.
//! - [`OpenAiChat`]: the same servers' streaming chat (`stream: true`), delta by delta,
//!   cancellable (the voice server's converse pipeline).
//!
//! - [`loopback::LoopbackChatServer`]: a tagging (and, for `stream: true`, SSE-streaming)
//!   chat-completions server on 127.0.0.1 for tests and benchmarks (not a translator).

pub mod generate;
pub mod local;
pub mod loopback;
pub mod m2m100;
pub mod marian;
pub mod openai;
pub mod spm;
pub mod tokenizer;

pub use openai::{
    prompt_hash, system_prompt, BackoffConfig, ChatEnd, ChatEvent, ChatMessage, ChatStream,
    OpenAiChat, OpenAiConfig, OpenAiTranslator, PROMPT_VERSION, SYSTEM_PROMPT_TEMPLATE,
};
