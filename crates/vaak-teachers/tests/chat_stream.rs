//! The streaming chat client against the loopback SSE server on 127.0.0.1: deltas arrive in
//! order and make the reply, a cancel drops the connection (the server sees the stream end
//! early), and a failing server is an error naming the status and its message.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use vaak_teachers::mt::loopback::{LoopbackChatServer, LoopbackOptions};
use vaak_teachers::mt::{ChatEnd, ChatEvent, ChatMessage, OpenAiChat, OpenAiConfig};

fn client(server: &LoopbackChatServer) -> OpenAiChat {
    OpenAiChat::with_env(
        OpenAiConfig {
            base_url: server.base_url().into(),
            model: "loop".into(),
            timeout_ms: 10_000,
            ..Default::default()
        },
        |_| None,
    )
    .unwrap()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn deltas_make_the_reply_and_the_stream_completes() {
    let opts = LoopbackOptions {
        reply: "One two. Three four five.".into(),
        token_interval: Duration::from_millis(1),
        fail_status: None,
    };
    let server = LoopbackChatServer::start_with(opts).unwrap();
    let c = client(&server);
    let msgs = vec![ChatMessage::new("user", "hi")];
    let mut deltas = Vec::new();
    let end = c
        .stream_with(&msgs, &AtomicBool::new(false), |d| {
            deltas.push(d.to_string());
            true
        })
        .unwrap();
    assert_eq!(
        end,
        ChatEnd::Done {
            finish_reason: Some("stop".into())
        }
    );
    assert_eq!(deltas.len(), 5);
    assert_eq!(deltas.concat(), "One two. Three four five.");
    assert_eq!(
        server.last_body().unwrap()["stream"],
        serde_json::json!(true)
    );
    wait_for("the completed stream", || server.completed() == 1);
    assert_eq!(server.cancelled(), 0);

    // The iterator form gives the same deltas, then the end.
    let events: Vec<ChatEvent> = c.stream(msgs).collect();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0], ChatEvent::Delta("One ".into()));
    assert!(matches!(events[5], ChatEvent::End(ChatEnd::Done { .. })));
}

#[test]
fn cancelling_closes_the_connection() {
    let opts = LoopbackOptions {
        reply: "word ".repeat(200),
        token_interval: Duration::from_millis(5),
        fail_status: None,
    };
    let server = LoopbackChatServer::start_with(opts).unwrap();
    let c = client(&server);
    let mut n = 0;
    let end = c
        .stream_with(
            &[ChatMessage::new("user", "go")],
            &AtomicBool::new(false),
            |_| {
                n += 1;
                n < 3
            },
        )
        .unwrap();
    assert_eq!(end, ChatEnd::Cancelled);
    assert_eq!(n, 3);
    wait_for("the server to see the disconnect", || {
        server.cancelled() == 1
    });
    assert_eq!(server.completed(), 0);

    // Dropping the iterator cancels too.
    let mut s = c.stream(vec![ChatMessage::new("user", "go")]);
    assert!(matches!(s.next(), Some(ChatEvent::Delta(_))));
    drop(s);
    wait_for("the second disconnect", || server.cancelled() == 2);
}

#[test]
fn a_failing_server_is_an_error_with_its_status_and_message() {
    let server = LoopbackChatServer::start_with(LoopbackOptions {
        fail_status: Some(503),
        ..Default::default()
    })
    .unwrap();
    let e = client(&server)
        .stream_with(
            &[ChatMessage::new("user", "x")],
            &AtomicBool::new(false),
            |_| true,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("503") && e.contains("loopback server fails"),
        "{e}"
    );
}
