//! Prometheus metrics (`/metrics`, text format).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

type Labels = Vec<(&'static str, &'static str)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: Gauge,
    pub sessions_total: Counter,
    /// Per-stage latency in seconds: `endpoint`, `encode_flush`, `first_decoder_step`,
    /// `codec_decode`, `server_total`, `worker_tick`.
    pub stage_seconds: HistFamily,
    /// Model worker compute time per second of audio advanced (EWMA; < 1 is real time).
    pub real_time_factor: Gauge<f64, AtomicU64>,
    /// Client frames missing from the sequence numbers, plus server frames dropped.
    pub dropped_frames: Counter,
    pub interrupts: Counter,
    pub false_interruptions: Counter,
    pub turns: Counter,
    pub errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vaak");
        let m = Self {
            sessions_active: Gauge::default(),
            sessions_total: Counter::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            real_time_factor: Gauge::default(),
            dropped_frames: Counter::default(),
            interrupts: Counter::default(),
            false_interruptions: Counter::default(),
            turns: Counter::default(),
            errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_active",
            "Sessions connected now",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions",
            "Sessions accepted since start",
            m.sessions_total.clone(),
        );
        registry.register(
            "stage_seconds",
            "Latency of each reply stage",
            m.stage_seconds.clone(),
        );
        registry.register(
            "real_time_factor",
            "Model worker compute seconds per second of audio (EWMA)",
            m.real_time_factor.clone(),
        );
        registry.register(
            "dropped_frames",
            "Frames lost (client sequence gaps, server queue overflow)",
            m.dropped_frames.clone(),
        );
        registry.register(
            "interrupts",
            "Replies cut by a barge-in",
            m.interrupts.clone(),
        );
        registry.register(
            "false_interruptions",
            "Replies paused by user speech too short to interrupt, then resumed",
            m.false_interruptions.clone(),
        );
        registry.register("turns", "User turns ended", m.turns.clone());
        registry.register("errors", "ERROR frames sent, by code", m.errors.clone());
        Self { registry, ..m }
    }

    pub fn observe_stage(&self, stage: &'static str, seconds: f64) {
        self.stage_seconds
            .get_or_create(&vec![("stage", stage)])
            .observe(seconds);
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&vec![("code", code.name())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}
