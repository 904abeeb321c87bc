//! Pipeline mode end to end: protocol clients against a server on 127.0.0.1:0 running the tiny
//! published-layout fixtures (Whisper, M2M-100, the OpenVoice converter), espeak-ng, and a
//! loopback OpenAI-compatible server that streams its reply with server-sent events.
//!
//! The tiny models are random, so their words are noise: these tests check the plumbing (a
//! transcript and a reply in META, reply audio out, the stages timed, cancellation, errors),
//! never the words. Timeouts are hang guards only; nothing asserts on wall-clock time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vaak_server::client::{Client, ClientConfig, Event};
use vaak_server::protocol::{Control, ErrorCode, Hello, Mode, TurnEndReason};
use vaak_server::{PipelineMode, RunningServer, ServeConfig};
use vaak_teachers::mt::loopback::{LoopbackChatServer, LoopbackOptions};

const GUARD: Duration = Duration::from_secs(120);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data");

fn fixture(rel: &str) -> String {
    PathBuf::from(FIXTURES).join(rel).display().to_string()
}

/// The test speech (16 kHz), then `silence_s` of digital silence.
fn speech(silence_s: f64) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech.wav");
    let r = hound::WavReader::open(p).unwrap();
    assert_eq!(r.spec().sample_rate, 16000);
    let mut x: Vec<f32> = r
        .into_samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect();
    x.extend(std::iter::repeat_n(0.0, (silence_s * 16000.0) as usize));
    x
}

/// The loopback LLM (it runs its own runtime, so it starts off the test's).
fn llm(opts: LoopbackOptions) -> LoopbackChatServer {
    std::thread::spawn(move || LoopbackChatServer::start_with(opts).unwrap())
        .join()
        .unwrap()
}

fn config(mode: PipelineMode, llm: Option<&str>) -> ServeConfig {
    let mut cfg = ServeConfig {
        port: 0,
        max_sessions: 2,
        ..Default::default()
    };
    cfg.limits.max_messages_per_s = 100_000;
    let p = &mut cfg.pipeline;
    p.mode = mode;
    p.source_lang = "en".into();
    p.asr.weights = Some(fixture("whisper/tiny80"));
    // The random tiny Whisper babbles; a few tokens keep its text inside the tiny M2M-100's
    // 64 positions.
    p.asr
        .options
        .insert("max_new_tokens".into(), toml::Value::Integer(3));
    p.tts.converter = Some(fixture("openvoice/converter"));
    p.tts.rate_wpm = 300;
    match mode {
        PipelineMode::Translate => {
            p.target_lang = Some("ru".into());
            p.translator.kind = "m2m100".into();
            p.translator.weights = Some(fixture("mt_m2m100/e2e_m2m"));
            p.translator
                .options
                .insert("max_length".into(), toml::Value::Integer(12));
            p.translator
                .options
                .insert("allow_truncated".into(), toml::Value::Boolean(true));
        }
        _ => {
            p.llm.base_url = llm.map(str::to_string);
            p.llm.model = Some("loopback".into());
            p.llm.timeout_ms = 20_000;
        }
    }
    cfg
}

async fn connect(server: &RunningServer, mode: Mode) -> Client {
    let hello = Hello {
        mode,
        ..Hello::default()
    };
    Client::connect(&ClientConfig::new(server.addr(), hello))
        .await
        .unwrap()
}

/// Speaks one turn (the VAD ends it in the trailing silence) and waits for its end.
async fn turn(c: &mut Client) -> (u32, TurnEndReason) {
    c.sender().stream(&speech(1.5), false).await.unwrap();
    c.wait_turn_ended(GUARD).await.unwrap()
}

fn check_reply_turn(c: &Client, turn: u32) {
    let s = c.stats();
    let rec = &s.turns[&turn];
    assert!(rec.transcript.is_some(), "no transcript META: {rec:?}");
    assert!(
        rec.reply.as_deref().is_some_and(|r| !r.is_empty()),
        "no reply META: {rec:?}; errors {:?}",
        s.errors
    );
    assert!(rec.audio_samples > 1600, "too little reply audio: {rec:?}");
    for k in [
        "endpoint",
        "asr",
        "first_token",
        "first_tts_audio",
        "first_audio_sent",
    ] {
        let v = rec.stages_ms.get(k).copied();
        assert!(v.is_some_and(|v| v.is_finite() && v >= 0.0), "{k}: {rec:?}");
    }
    // Every stage is timed from the end of the turn, in pipeline order.
    let st = |k: &str| rec.stages_ms[k];
    assert!(st("asr") <= st("first_token") && st("first_token") <= st("first_tts_audio"));
    assert!(st("first_tts_audio") <= st("first_audio_sent"));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translate_turn_gives_transcript_translation_and_audio() {
    let server = vaak_server::start(config(PipelineMode::Translate, None))
        .await
        .unwrap();
    let mut c = connect(&server, Mode::Translate).await;
    assert_eq!(c.welcome.modes, vec!["translate".to_string()]);
    let mut audio: Vec<i16> = Vec::new();
    c.sender().stream(&speech(1.5), false).await.unwrap();
    let (t, reason) = loop {
        match tokio::time::timeout(GUARD, c.next_event()).await.unwrap() {
            Some(Event::Audio { samples, .. }) => audio.extend(samples),
            Some(Event::Control(Control::TurnEnded { turn, reason })) => break (turn, reason),
            Some(Event::Closed(how)) => panic!("closed: {how}"),
            Some(_) => {}
            None => panic!("connection ended"),
        }
    };
    assert_eq!((t, reason), (1, TurnEndReason::Done));
    check_reply_turn(&c, 1);
    assert!(audio.iter().any(|&s| s != 0), "reply audio is all zeros");
    let (code, text) = vaak_server::client::http_get(server.addr(), "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    for stage in ["asr", "first_token", "first_tts_audio", "first_audio_sent"] {
        let want = format!("vaak_stage_seconds_count{{stage=\"{stage}\"}} 1");
        assert!(text.contains(&want), "{want} missing from /metrics");
    }
    c.sender().close().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_streams_the_llm_reply_into_speech_and_keeps_history() {
    let llm = llm(LoopbackOptions {
        reply: "Hello there. This is a streamed reply. It has three sentences.".into(),
        token_interval: Duration::from_millis(5),
        fail_status: None,
    });
    let server = vaak_server::start(config(PipelineMode::Converse, Some(llm.base_url())))
        .await
        .unwrap();
    let mut c = connect(&server, Mode::Converse).await;
    assert_eq!(turn(&mut c).await, (1, TurnEndReason::Done));
    check_reply_turn(&c, 1);
    assert_eq!(
        c.stats().turns[&1].reply.as_deref(),
        Some("Hello there. This is a streamed reply. It has three sentences.")
    );
    let body = llm.last_body().unwrap();
    assert_eq!(body["stream"], serde_json::json!(true));
    assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");

    // The second turn carries the first as history: system, user, assistant, user.
    assert_eq!(turn(&mut c).await, (2, TurnEndReason::Done));
    check_reply_turn(&c, 2);
    let body = llm.last_body().unwrap();
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "{body}");
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(
        msgs[2]["content"],
        "Hello there. This is a streamed reply. It has three sentences."
    );
    assert_eq!(llm.completed(), 2);
    c.sender().close().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_llm_stream_and_the_audio() {
    // A long reply at 50 tokens/s: it is still streaming when the user cuts in.
    let llm = llm(LoopbackOptions {
        reply: "This is one short sentence. ".repeat(60),
        token_interval: Duration::from_millis(20),
        fail_status: None,
    });
    let server = vaak_server::start(config(PipelineMode::Converse, Some(llm.base_url())))
        .await
        .unwrap();
    let mut c = connect(&server, Mode::Converse).await;
    c.sender().stream(&speech(1.5), false).await.unwrap();
    c.wait_for("turn 1's first reply audio", GUARD, |e| {
        matches!(e, Event::Audio { turn: 1, .. })
    })
    .await
    .unwrap();
    assert_eq!(llm.cancelled(), 0);
    // The user speaks over the reply: the VAD's barge-in.
    let barge = c.sender();
    tokio::spawn(async move { barge.stream(&speech(0.0), false).await });
    c.wait_for("the flush of turn 1", GUARD, |e| {
        matches!(e, Event::Control(Control::Flush { turn: 1 }))
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    while llm.cancelled() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the LLM server never saw the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(llm.completed(), 0);
    c.drain_for(Duration::from_millis(300)).await;
    let s = c.stats();
    assert_eq!(s.turns[&1].ended, Some(TurnEndReason::Interrupted));
    assert!(s.turns[&1].flushed);
    assert_eq!(s.stale_frames, 0, "audio of turn 1 after its flush");
    assert_eq!(
        vaak_server::client::metric(
            &vaak_server::client::http_get(server.addr(), "/metrics")
                .await
                .unwrap()
                .1,
            "vaak_interrupts_total"
        ),
        Some(1.0)
    );
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_llm_gives_an_error_and_the_session_survives() {
    let llm = llm(LoopbackOptions {
        reply: "Back again. All good.".into(),
        token_interval: Duration::from_millis(5),
        fail_status: Some(500),
    });
    let server = vaak_server::start(config(PipelineMode::Converse, Some(llm.base_url())))
        .await
        .unwrap();
    let mut c = connect(&server, Mode::Converse).await;
    c.sender().stream(&speech(1.5), false).await.unwrap();
    let e = c
        .wait_for("an ERROR", GUARD, |e| matches!(e, Event::Error(_)))
        .await
        .unwrap();
    let Event::Error(e) = e else { unreachable!() };
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(!e.fatal);
    assert!(
        e.message.contains("llm") && e.message.contains("500"),
        "{e:?}"
    );
    assert_eq!(
        c.wait_turn_ended(GUARD).await.unwrap(),
        (1, TurnEndReason::Done)
    );
    assert_eq!(c.stats().turns[&1].audio_samples, 0);

    // The server recovers; the same session completes the next turn.
    llm.set_options(LoopbackOptions {
        reply: "Back again. All good.".into(),
        token_interval: Duration::from_millis(5),
        fail_status: None,
    });
    assert_eq!(turn(&mut c).await, (2, TurnEndReason::Done));
    let s = c.stats();
    assert!(s.turns[&2].audio_samples > 1600, "{:?}", s.turns[&2]);
    assert_eq!(s.turns[&2].reply.as_deref(), Some("Back again. All good."));
    c.sender().close().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_models_are_named() {
    let mut cfg = config(PipelineMode::Converse, None);
    let e = vaak_server::start(cfg.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("pipeline.llm.base_url"), "{e}");
    cfg.pipeline.asr.weights = None;
    let e = vaak_server::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("pipeline.asr.weights"), "{e}");
}
