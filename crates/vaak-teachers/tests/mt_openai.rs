//! Contract test of `OpenAiTranslator` against a real HTTP server (axum on 127.0.0.1:0) that
//! checks each request's shape, answers canned translations and can be scripted to fail.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use vaak_teachers::mt::{
    prompt_hash, system_prompt, BackoffConfig, OpenAiConfig, OpenAiTranslator,
};
use vaak_teachers::{Lang, TeacherError, Translator};

const KEY: &str = "sk-test-123";
const MODEL: &str = "tiny-mt";
/// How long the first requests of a gated server wait for their batch-mates at most.
const GATE_WAIT: Duration = Duration::from_secs(2);

/// One scripted answer to one request for a given input text.
#[derive(Clone, Debug)]
enum Action {
    /// Reply with this status and a JSON error body, optionally with `Retry-After`.
    Fail(u16, &'static str, Option<&'static str>),
    /// Sleep this long, then answer normally.
    Delay(u64),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with the canned text, but `finish_reason: "length"`.
    Truncated,
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    auth: Option<String>,
    content_type: Option<String>,
    body: Value,
    at: Instant,
}

impl Seen {
    fn text(&self) -> &str {
        self.body["messages"][1]["content"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Mock {
    canned: HashMap<String, String>,
    script: Mutex<HashMap<String, VecDeque<Action>>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// The first `gate` requests wait (up to `GATE_WAIT`) until `gate` are in flight.
    gate: usize,
    arrivals: AtomicUsize,
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(status: u16, body: Value, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(r) = retry_after {
        b = b.header("retry-after", r);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn openai_error(status: u16, msg: &str) -> Response {
    json_response(
        status,
        json!({"error": {"message": msg, "type": "invalid_request_error"}}),
        None,
    )
}

fn completion(content: &str, finish: &str) -> Response {
    json_response(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": format!(" {content}\n")}}]
        }),
        None,
    )
}

async fn handle(
    State(mock): State<Arc<Mock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let now = mock.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&mock.in_flight);
    mock.peak.fetch_max(now, Ordering::SeqCst);
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let seen = Seen {
        method: method.clone(),
        path: uri.path().to_string(),
        auth: header("authorization"),
        content_type: header("content-type"),
        body: parsed.clone(),
        at: Instant::now(),
    };
    mock.seen.lock().unwrap().push(seen.clone());

    if method != Method::POST || uri.path() != "/v1/chat/completions" {
        return openai_error(404, &format!("no route {method} {}", uri.path()));
    }
    if seen.auth.as_deref() != Some(&format!("Bearer {KEY}")) {
        return openai_error(401, "Incorrect API key provided");
    }
    if parsed["model"] != MODEL {
        return openai_error(
            404,
            &format!("The model '{}' does not exist", parsed["model"]),
        );
    }
    if mock.arrivals.fetch_add(1, Ordering::SeqCst) < mock.gate {
        let t0 = Instant::now();
        while mock.in_flight.load(Ordering::SeqCst) < mock.gate && t0.elapsed() < GATE_WAIT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let text = seen.text().to_string();
    let action = mock
        .script
        .lock()
        .unwrap()
        .get_mut(&text)
        .and_then(VecDeque::pop_front);
    let Some(translation) = mock.canned.get(&text) else {
        return openai_error(400, &format!("test server has no translation for {text:?}"));
    };
    match action {
        Some(Action::Fail(code, msg, retry_after)) => json_response(
            code,
            json!({"error": {"message": msg, "type": "server_error"}}),
            retry_after,
        ),
        Some(Action::Malformed) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from("{\"choices\": [{\"message\": "))
            .unwrap(),
        Some(Action::Truncated) => completion(translation, "length"),
        Some(Action::Delay(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            completion(translation, "stop")
        }
        None => completion(translation, "stop"),
    }
}

struct Server {
    base_url: String,
    mock: Arc<Mock>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Handlers may still be sleeping past a client timeout; don't wait for them.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    fn start(mock: Mock) -> Self {
        let mock = Arc::new(mock);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(mock.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Self {
            base_url: format!("http://{addr}/v1"),
            mock,
            rt: Some(rt),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.mock.seen.lock().unwrap().clone()
    }

    fn seen_for(&self, text: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.text() == text)
            .collect()
    }
}

fn mock(pairs: &[(&str, &str)]) -> Mock {
    Mock {
        canned: pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn script(m: &Mock, text: &str, actions: Vec<Action>) {
    m.script
        .lock()
        .unwrap()
        .insert(text.to_string(), actions.into());
}

/// Fast settings: short backoff, no jitter, the test key.
fn config(server: &Server) -> OpenAiConfig {
    OpenAiConfig {
        base_url: server.base_url.clone(),
        model: MODEL.into(),
        api_key: Some(KEY.into()),
        max_concurrency: 4,
        max_retries: 3,
        backoff: BackoffConfig {
            initial_ms: 1,
            max_ms: 5_000,
            jitter: 0.0,
            jitter_seed: 0,
        },
        timeout_ms: 5_000,
        ..Default::default()
    }
}

fn err_text<T: std::fmt::Debug>(r: &Result<T, TeacherError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

const PAIRS: &[(&str, &str)] = &[
    ("Good morning.", "Доброе утро."),
    ("-n is not a flag", "-n — это не флаг"),
    ("नमस्ते, आप कैसे हैं?", "Hello, how are you?"),
    ("మీరు ఎలా ఉన్నారు?", "How are you?"),
    ("Where is the station?", "Где вокзал?"),
    ("Thank you very much.", "Большое спасибо."),
];

#[test]
fn requests_have_the_documented_shape_and_results_keep_input_order() {
    let m = mock(PAIRS);
    // Later items answer sooner, so completion order is the reverse of input order.
    for (i, (src, _)) in PAIRS.iter().enumerate() {
        script(&m, src, vec![Action::Delay(40 * (PAIRS.len() - i) as u64)]);
    }
    let server = Server::start(m);
    let t = OpenAiTranslator::new(config(&server)).unwrap();

    let mut batch: Vec<&str> = PAIRS.iter().map(|(s, _)| *s).collect();
    batch.insert(2, "   \n");
    batch.push("");
    let out = t.translate(&batch, Lang::En, Lang::Ru).unwrap();
    assert_eq!(out.len(), batch.len());
    let got: Vec<String> = out
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2 && *i != batch.len() - 1)
        .map(|(_, r)| r.as_ref().unwrap().clone())
        .collect();
    let want: Vec<String> = PAIRS.iter().map(|(_, t)| t.to_string()).collect();
    assert_eq!(got, want, "translations trimmed and in input order");
    for i in [2, batch.len() - 1] {
        assert!(
            matches!(&out[i], Err(TeacherError::BadInput(m)) if m.contains(&format!("item {i}"))),
            "{:?}",
            out[i]
        );
    }

    let seen = server.seen();
    assert_eq!(seen.len(), PAIRS.len(), "empty items are never sent");
    let system = system_prompt(Lang::En, Lang::Ru);
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.auth.as_deref(), Some("Bearer sk-test-123"));
        assert!(s
            .content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("application/json"));
        let b = &s.body;
        assert_eq!(b["model"], MODEL);
        assert_eq!(b["temperature"].as_f64(), Some(0.0));
        assert_eq!(
            b["messages"],
            json!([{"role": "system", "content": system},
                   {"role": "user", "content": s.text()}])
        );
        assert!(
            b.get("max_tokens").is_none() && b.get("seed").is_none(),
            "{b}"
        );
    }
    let mut sent: Vec<&str> = seen.iter().map(Seen::text).collect();
    sent.sort_unstable();
    let mut inputs: Vec<&str> = PAIRS.iter().map(|(s, _)| *s).collect();
    inputs.sort_unstable();
    assert_eq!(sent, inputs, "each text sent once, unchanged");
    assert!(system.contains("from English into Russian"));

    let id = t.model_id();
    assert_eq!(id.name, MODEL);
    let rev = id.revision.unwrap();
    assert!(
        rev.contains(&prompt_hash()) && rev.contains("temperature 0"),
        "{rev}"
    );
}

#[test]
fn max_tokens_and_seed_are_sent_when_set_and_a_cut_reply_is_an_item_error() {
    let m = mock(PAIRS);
    script(&m, PAIRS[1].0, vec![Action::Truncated]);
    let server = Server::start(m);
    let t = OpenAiTranslator::new(OpenAiConfig {
        max_tokens: Some(64),
        seed: Some(7),
        ..config(&server)
    })
    .unwrap();
    let out = t
        .translate(&[PAIRS[0].0, PAIRS[1].0], Lang::Hi, Lang::Te)
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), PAIRS[0].1);
    let e = err_text(&out[1]);
    assert!(e.contains("max_tokens") && e.contains("item 1"), "{e}");
    for s in server.seen() {
        assert_eq!(s.body["max_tokens"], 64);
        assert_eq!(s.body["seed"], 7);
        assert_eq!(
            s.body["messages"][0]["content"],
            system_prompt(Lang::Hi, Lang::Te)
        );
    }
    assert_eq!(
        server.seen_for(PAIRS[1].0).len(),
        1,
        "a cut reply is not retried"
    );
}

#[test]
fn concurrency_is_used_and_bounded() {
    const MAX: usize = 3;
    let texts: Vec<String> = (0..12).map(|i| format!("sentence {i}")).collect();
    let pairs: Vec<(&str, &str)> = texts.iter().map(|s| (s.as_str(), s.as_str())).collect();
    let mut m = mock(&pairs);
    m.gate = MAX;
    for s in &texts {
        script(&m, s, vec![Action::Delay(15)]);
    }
    let server = Server::start(m);
    let t = OpenAiTranslator::new(OpenAiConfig {
        max_concurrency: MAX,
        ..config(&server)
    })
    .unwrap();
    let batch: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = t.translate(&batch, Lang::En, Lang::Hi).unwrap();
    let got: Vec<&str> = out.iter().map(|r| r.as_ref().unwrap().as_str()).collect();
    assert_eq!(got, batch);
    // The first MAX requests wait for each other, so a client that sends fewer at once never
    // reaches MAX, and one that sends more exceeds it.
    assert_eq!(server.mock.peak.load(Ordering::SeqCst), MAX);
}

#[test]
fn server_errors_are_retried_until_success() {
    let m = mock(PAIRS);
    script(
        &m,
        PAIRS[0].0,
        vec![
            Action::Fail(500, "internal error", None),
            Action::Fail(503, "overloaded", None),
        ],
    );
    let server = Server::start(m);
    let t = OpenAiTranslator::new(config(&server)).unwrap();
    let out = t
        .translate(&[PAIRS[0].0, PAIRS[4].0], Lang::En, Lang::Ru)
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), PAIRS[0].1);
    assert_eq!(out[1].as_ref().unwrap(), PAIRS[4].1);
    assert_eq!(server.seen_for(PAIRS[0].0).len(), 3);
    assert_eq!(server.seen_for(PAIRS[4].0).len(), 1);
}

#[test]
fn retries_are_bounded_and_the_error_says_why() {
    let m = mock(PAIRS);
    script(
        &m,
        PAIRS[0].0,
        vec![Action::Fail(502, "bad gateway upstream", None); 5],
    );
    let server = Server::start(m);
    let t = OpenAiTranslator::new(OpenAiConfig {
        max_retries: 2,
        ..config(&server)
    })
    .unwrap();
    let out = t.translate(&[PAIRS[0].0], Lang::En, Lang::Ru).unwrap();
    let e = err_text(&out[0]);
    assert!(
        e.contains("502") && e.contains("bad gateway upstream"),
        "{e}"
    );
    assert!(e.contains("gave up after 3 attempts"), "{e}");
    assert_eq!(server.seen_for(PAIRS[0].0).len(), 3);
}

#[test]
fn rate_limit_waits_for_retry_after() {
    let m = mock(PAIRS);
    script(
        &m,
        PAIRS[0].0,
        vec![Action::Fail(429, "Rate limit reached", Some("1"))],
    );
    let server = Server::start(m);
    // The computed backoff is 1 ms, so only Retry-After can explain a longer wait.
    let t = OpenAiTranslator::new(config(&server)).unwrap();
    let out = t.translate(&[PAIRS[0].0], Lang::En, Lang::Ru).unwrap();
    assert_eq!(out[0].as_ref().unwrap(), PAIRS[0].1);
    let seen = server.seen_for(PAIRS[0].0);
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    // A lower bound only: sleeping guarantees at least this long.
    assert!(gap >= Duration::from_millis(1000), "retried after {gap:?}");
}

#[test]
fn client_errors_are_not_retried_and_name_status_and_message() {
    let m = mock(PAIRS);
    script(
        &m,
        PAIRS[2].0,
        vec![Action::Fail(
            400,
            "maximum context length is 8 tokens",
            None,
        )],
    );
    let server = Server::start(m);
    let t = OpenAiTranslator::new(config(&server)).unwrap();
    let batch = [PAIRS[0].0, PAIRS[2].0, PAIRS[3].0];
    let out = t.translate(&batch, Lang::Hi, Lang::En).unwrap();
    let e = err_text(&out[1]);
    eprintln!("{e}");
    assert!(
        e.contains("HTTP 400") && e.contains("maximum context length is 8 tokens"),
        "{e}"
    );
    assert!(e.contains("item 1") && e.contains(&server.base_url), "{e}");
    assert_eq!(out[0].as_ref().unwrap(), PAIRS[0].1);
    assert_eq!(out[2].as_ref().unwrap(), PAIRS[3].1);
    assert_eq!(server.seen_for(PAIRS[2].0).len(), 1, "400 is not retried");
}

#[test]
fn a_slow_reply_times_out_for_that_item_only() {
    let m = mock(PAIRS);
    script(&m, PAIRS[5].0, vec![Action::Delay(10_000); 2]);
    let server = Server::start(m);
    let t = OpenAiTranslator::new(OpenAiConfig {
        // Long enough that the healthy item never times out on a loaded machine.
        timeout_ms: 1_000,
        max_retries: 1,
        ..config(&server)
    })
    .unwrap();
    let out = t
        .translate(&[PAIRS[5].0, PAIRS[4].0], Lang::En, Lang::Ru)
        .unwrap();
    let e = err_text(&out[0]);
    eprintln!("{e}");
    assert!(e.contains("timed out after 1000 ms"), "{e}");
    assert!(e.contains("gave up after 2 attempts"), "{e}");
    assert_eq!(out[1].as_ref().unwrap(), PAIRS[4].1);
    assert_eq!(server.seen_for(PAIRS[5].0).len(), 2, "a timeout is retried");
}

#[test]
fn malformed_json_is_an_item_error() {
    let m = mock(PAIRS);
    script(&m, PAIRS[0].0, vec![Action::Malformed]);
    let server = Server::start(m);
    let t = OpenAiTranslator::new(config(&server)).unwrap();
    let out = t
        .translate(&[PAIRS[0].0, PAIRS[1].0], Lang::En, Lang::Ru)
        .unwrap();
    let e = err_text(&out[0]);
    assert!(
        e.contains("malformed JSON") && e.contains("{\"choices\""),
        "{e}"
    );
    assert_eq!(out[1].as_ref().unwrap(), PAIRS[1].1);
}

#[test]
fn a_wrong_or_missing_key_fails_the_whole_batch_without_retries() {
    let server = Server::start(mock(PAIRS));
    let batch: Vec<&str> = PAIRS.iter().map(|(s, _)| *s).collect();
    let t = OpenAiTranslator::new(OpenAiConfig {
        api_key: Some("sk-wrong".into()),
        max_concurrency: 1,
        ..config(&server)
    })
    .unwrap();
    let e = t
        .translate(&batch, Lang::En, Lang::Ru)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("HTTP 401") && e.contains("Incorrect API key provided"),
        "{e}"
    );
    assert_eq!(server.seen().len(), 1, "fatal errors stop the batch");

    // No key anywhere: no Authorization header at all.
    let t = OpenAiTranslator::with_env(
        OpenAiConfig {
            api_key: None,
            ..config(&server)
        },
        |_| None,
    )
    .unwrap();
    let e = t
        .translate(&batch[..1], Lang::En, Lang::Ru)
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    assert_eq!(server.seen().last().unwrap().auth, None);

    // The key from the named environment variable is the one sent.
    let t = OpenAiTranslator::with_env(
        OpenAiConfig {
            api_key: None,
            api_key_env: "VAAK_MT_KEY".into(),
            ..config(&server)
        },
        |name| (name == "VAAK_MT_KEY").then(|| KEY.to_string()),
    )
    .unwrap();
    let out = t.translate(&batch[..1], Lang::En, Lang::Ru).unwrap();
    assert_eq!(out[0].as_ref().unwrap(), PAIRS[0].1);
}

#[test]
fn an_unknown_model_or_path_fails_the_whole_batch() {
    let server = Server::start(mock(PAIRS));
    let t = OpenAiTranslator::new(OpenAiConfig {
        model: "no-such-model".into(),
        ..config(&server)
    })
    .unwrap();
    let e = t
        .translate(&[PAIRS[0].0], Lang::En, Lang::Ru)
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 404") && e.contains("no-such-model"), "{e}");

    let t = OpenAiTranslator::new(OpenAiConfig {
        base_url: server.base_url.replace("/v1", "/v2"),
        ..config(&server)
    })
    .unwrap();
    let e = t
        .translate(&[PAIRS[0].0], Lang::En, Lang::Ru)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 404") && e.contains("/v2/chat/completions"),
        "{e}"
    );
}

#[test]
fn an_unreachable_server_fails_the_batch_after_retries() {
    // A port that was just free: bind, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = OpenAiTranslator::new(OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        model: MODEL.into(),
        max_retries: 2,
        backoff: BackoffConfig {
            initial_ms: 1,
            max_ms: 10,
            jitter: 0.5,
            jitter_seed: 1,
        },
        timeout_ms: 2_000,
        ..Default::default()
    })
    .unwrap();
    let e = t
        .translate(&[PAIRS[0].0, PAIRS[1].0], Lang::En, Lang::Ru)
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("unreachable") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    assert!(e.contains("gave up after 3 attempts"), "{e}");
}
