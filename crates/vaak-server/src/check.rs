//! The system check (`vaak check`): starts the server on loopback with a given config and
//! drives it through the protocol client like a user would, then prints a pass/fail table.
//!
//! Checks, in order (each one's detail gives the numbers):
//! - `server`: it starts on 127.0.0.1, `/health` answers 200 with JSON, WELCOME is protocol 1;
//! - `codec`: `echo` mode returns the spoken utterance through the codec: reply duration within
//!   20% of the input and its level within 10 dB;
//! - `model`: `translate` answers a spoken turn with reply audio and a latency breakdown;
//! - `voices`: WELCOME lists the model's voices and each is accepted by `set` (no ERROR);
//! - `context`: two turns in one `converse` session are both answered, in order;
//! - `barge-in`: an `interrupt` during a reply flushes it and no audio of it arrives after;
//! - `latency`: median end of speech → first reply audio at the client, less the endpoint
//!   silence, within `target_ms`.
//!
//! Without an S2S model (`s2s = "none"`) the model, voices and context checks fail: the check
//! is for a server that can answer.

use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, speech, Client, ClientConfig, ClientError, Event, Mic};
use crate::config::ServeConfig;
use crate::protocol::{Control, Mode};

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckRow {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// Settings of the check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Goal for the median end-of-speech → first-audio latency, endpoint silence excluded.
    pub target_ms: f64,
    /// Hang guard per wait (not a performance bound).
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            target_ms: 400.0,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The whole result.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    /// The table: check, PASS/FAIL, detail.
    pub fn table(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!("{:<w$}  result  detail\n", "check");
        s.push_str(&format!("{}  ------  ------\n", "-".repeat(w)));
        for r in &self.rows {
            let res = if r.pass { "PASS" } else { "FAIL" };
            s.push_str(&format!("{:<w$}  {res:<6}  {}\n", r.name, r.detail));
        }
        s.push_str(&format!(
            "{} of {} checks passed\n",
            self.rows.iter().filter(|r| r.pass).count(),
            self.rows.len()
        ));
        s
    }

    fn push(&mut self, name: &'static str, res: std::result::Result<String, String>) {
        let (pass, detail) = match res {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.rows.push(CheckRow { name, pass, detail });
    }
}

fn rms_db(x: &[f32]) -> f64 {
    let e = x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * e.max(1e-12).log10()
}

/// The number of voiced 20 ms windows (RMS within 20 dB of the loudest window) and their mean
/// level in dB.
fn voiced(x: &[f32]) -> (usize, f64) {
    let w: Vec<f64> = x.chunks_exact(320).map(rms_db).collect();
    let top = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let v: Vec<f64> = w.into_iter().filter(|d| *d > top - 20.0).collect();
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (v.len(), mean)
}

/// Reply samples the check listens to in translate/converse before it interrupts (2 s).
const LISTEN: Option<usize> = Some(32_000);

/// One spoken turn's outcome.
struct TurnOutcome {
    turn: u32,
    samples: Vec<f32>,
    latency_ms: Option<f64>,
    endpoint_ms: Option<f64>,
}

/// Speaks `utt` on `mic` and collects the reply until its `turn_ended`; with `listen`, the user
/// presses "interrupt" once that many samples of the reply have arrived (a long reply need not
/// be heard to the end).
async fn spoken_turn(
    c: &mut Client,
    mic: &Mic,
    utt: &Arc<Vec<f32>>,
    timeout: Duration,
    listen: Option<usize>,
) -> Result<TurnOutcome, ClientError> {
    mic.say(utt.clone());
    let mut samples = Vec::new();
    let mut turn = None;
    let mut interrupted = false;
    loop {
        let ev = c
            .wait_for("the reply", timeout, |e| {
                matches!(
                    e,
                    Event::Audio { fresh: true, .. }
                        | Event::Control(Control::TurnEnded { .. })
                        | Event::Error(_)
                )
            })
            .await?;
        match ev {
            Event::Audio {
                turn: t,
                samples: s,
                ..
            } => {
                turn.get_or_insert(t);
                samples.extend(s.iter().map(|&x| f32::from(x) / 32768.0));
                if !interrupted && listen.is_some_and(|n| samples.len() >= n) {
                    c.sender().interrupt().await?;
                    interrupted = true;
                }
            }
            Event::Control(Control::TurnEnded { turn: t, .. }) if Some(t) == turn => break,
            Event::Error(e) if e.fatal => {
                return Err(ClientError::Server {
                    code: e.code.name().into(),
                    message: e.message,
                })
            }
            _ => {}
        }
    }
    let turn = turn.expect("a turn ended after its audio");
    let rec = c.stats().turns.get(&turn).cloned().unwrap_or_default();
    Ok(TurnOutcome {
        turn,
        samples,
        latency_ms: rec.latency_ms(),
        endpoint_ms: rec.endpoint_ms,
    })
}

async fn session(addr: std::net::SocketAddr, mode: Mode) -> Result<(Client, Mic), ClientError> {
    let c = Client::connect(&ClientConfig::new(addr, client::hello(mode))).await?;
    let mic = Mic::spawn(c.sender());
    Ok((c, mic))
}

/// Runs every check against a server started from `cfg` (bound to 127.0.0.1, a free port).
pub async fn run_check(mut cfg: ServeConfig, opts: &CheckOptions) -> CheckReport {
    let mut rep = CheckReport::default();
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.max_sessions = cfg.max_sessions.max(2);
    let utts: Vec<Arc<Vec<f32>>> = match [0usize, 1, 3]
        .iter()
        .map(|&i| {
            let u = speech::espeak(speech::SENTENCES[i], "en-us", 165)?;
            let (a, b) = speech::active_span(&u).unwrap_or((0, u.len()));
            Ok(Arc::new(u[a..b].to_vec()))
        })
        .collect::<Result<Vec<_>, ClientError>>()
    {
        Ok(u) => u,
        Err(e) => {
            rep.push("speech", Err(format!("cannot make test speech: {e}")));
            return rep;
        }
    };
    let server = match crate::start(cfg.clone()).await {
        Ok(s) => s,
        Err(e) => {
            rep.push("server", Err(format!("does not start: {e}")));
            return rep;
        }
    };
    let addr = server.addr();
    let t = opts.timeout;

    // server
    let health = client::http_get(addr, "/health").await;
    let res = match health {
        Ok((200, body)) if serde_json::from_str::<serde_json::Value>(&body).is_ok() => {
            match session(addr, Mode::Echo).await {
                Ok((c, _)) if c.welcome.protocol == 1 => Ok(format!(
                    "{addr}: /health 200, WELCOME protocol 1, modes {}",
                    c.welcome.modes.join("/")
                )),
                Ok((c, _)) => Err(format!("WELCOME protocol {}", c.welcome.protocol)),
                Err(e) => Err(format!("session: {e}")),
            }
        }
        Ok((code, body)) => Err(format!("/health {code}: {body}")),
        Err(e) => Err(format!("/health: {e}")),
    };
    rep.push("server", res);

    // codec (echo)
    let res = async {
        let (mut c, mic) = session(addr, Mode::Echo).await.map_err(|e| e.to_string())?;
        let o = spoken_turn(&mut c, &mic, &utts[0], t, None)
            .await
            .map_err(|e| e.to_string())?;
        // The voiced 20 ms windows of each (within 20 dB of the loudest), so the turn's padding
        // and the codec's noise floor do not count.
        let (echo_n, echo_db) = voiced(&o.samples);
        let (in_n, in_db) = voiced(&utts[0]);
        if echo_n == 0 {
            return Err("the echo is silent".to_string());
        }
        let ratio = echo_n as f64 / in_n.max(1) as f64;
        let level = echo_db - in_db;
        let codec_ms = c.stats().turns[&o.turn].stages_ms.get("codec_decode").copied();
        let d = format!(
            "echo voiced {:.2} s for {:.2} s spoken (x{ratio:.2}), level {level:+.1} dB, codec decode {} ms",
            echo_n as f64 * 0.02,
            in_n as f64 * 0.02,
            codec_ms.map_or("-".into(), |x| format!("{x:.1}"))
        );
        if (0.8..=1.2).contains(&ratio) && level.abs() <= 10.0 {
            Ok(d)
        } else {
            Err(d)
        }
    }
    .await;
    rep.push("codec", res);

    // model (translate)
    // (latency, endpoint silence) of each answered turn.
    let mut measured: Vec<(f64, f64)> = Vec::new();
    let mut voices = Vec::new();
    let res = async {
        let (mut c, mic) = session(addr, Mode::Translate)
            .await
            .map_err(|e| e.to_string())?;
        voices = c.welcome.voices.clone();
        let o = spoken_turn(&mut c, &mic, &utts[1], t, LISTEN)
            .await
            .map_err(|e| e.to_string())?;
        measured.extend(o.latency_ms.map(|l| (l, o.endpoint_ms.unwrap_or(0.0))));
        let rec = c.stats().turns[&o.turn].clone();
        if o.samples.is_empty() || rec.stages_ms.is_empty() {
            return Err(format!(
                "turn {}: {} reply samples, latency breakdown {:?}",
                o.turn,
                o.samples.len(),
                rec.stages_ms
            ));
        }
        Ok(format!(
            "turn {}: {:.2} s of reply; first decoder step {:.1} ms, server total {:.1} ms",
            o.turn,
            o.samples.len() as f64 / 16000.0,
            rec.stages_ms
                .get("first_decoder_step")
                .copied()
                .unwrap_or(f64::NAN),
            rec.stages_ms
                .get("server_total")
                .copied()
                .unwrap_or(f64::NAN)
        ))
    }
    .await;
    rep.push("model", res);

    // voices
    let res = async {
        if voices.is_empty() {
            return Err("WELCOME lists no voices".to_string());
        }
        let (mut c, _mic) = session(addr, Mode::Translate)
            .await
            .map_err(|e| e.to_string())?;
        for v in &voices {
            c.sender()
                .control(&Control::Set {
                    voice: Some(v.clone()),
                    emotion: None,
                    mode: None,
                    turn_mode: None,
                    lang: None,
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        c.drain_for(Duration::from_millis(300)).await;
        let errs = c.stats().errors;
        if errs.is_empty() {
            Ok(format!(
                "{} voices accepted: {}",
                voices.len(),
                voices.join(", ")
            ))
        } else {
            Err(format!("set voice refused: {errs:?}"))
        }
    }
    .await;
    rep.push("voices", res);

    // context (two turns in converse)
    let res = async {
        let (mut c, mic) = session(addr, Mode::Converse)
            .await
            .map_err(|e| e.to_string())?;
        let a = spoken_turn(&mut c, &mic, &utts[0], t, LISTEN)
            .await
            .map_err(|e| format!("first turn: {e}"))?;
        let b = spoken_turn(&mut c, &mic, &utts[2], t, LISTEN)
            .await
            .map_err(|e| format!("second turn: {e}"))?;
        for o in [&a, &b] {
            measured.extend(o.latency_ms.map(|l| (l, o.endpoint_ms.unwrap_or(0.0))));
        }
        if b.turn > a.turn && !a.samples.is_empty() && !b.samples.is_empty() {
            Ok(format!(
                "turns {} and {} answered in one session ({:.2} s, {:.2} s)",
                a.turn,
                b.turn,
                a.samples.len() as f64 / 16000.0,
                b.samples.len() as f64 / 16000.0
            ))
        } else {
            Err(format!(
                "turns {} then {}, {} and {} reply samples",
                a.turn,
                b.turn,
                a.samples.len(),
                b.samples.len()
            ))
        }
    }
    .await;
    rep.push("context", res);

    // barge-in (echo: the reply is as long as the utterance)
    let res = async {
        let (mut c, mic) = session(addr, Mode::Echo).await.map_err(|e| e.to_string())?;
        mic.say(utts[1].clone());
        let ev = c
            .wait_for("reply audio", t, |e| matches!(e, Event::Audio { .. }))
            .await
            .map_err(|e| e.to_string())?;
        let Event::Audio { turn, .. } = ev else {
            unreachable!("wait_for returned an Audio event")
        };
        let sent = c.sender().interrupt().await.map_err(|e| e.to_string())?;
        let ev = c
            .wait_for(
                "flush",
                t,
                |e| matches!(e, Event::Control(Control::Flush { turn: f }) if *f >= turn),
            )
            .await
            .map_err(|e| e.to_string())?;
        let flushed_at = client::now_us();
        let _ = ev;
        // Anything of the flushed turn that still arrives is stale.
        c.drain_for(Duration::from_millis(800)).await;
        let s = c.stats();
        let d = format!(
            "flush {:.1} ms after interrupt, {} stale frames",
            (flushed_at - sent) as f64 / 1000.0,
            s.stale_frames
        );
        if s.stale_frames == 0 {
            Ok(d)
        } else {
            Err(d)
        }
    }
    .await;
    rep.push("barge-in", res);

    // latency
    let res = if measured.is_empty() {
        Err("no turn was measured".to_string())
    } else {
        let mut net: Vec<f64> = measured.iter().map(|(l, e)| l - e).collect();
        net.sort_by(f64::total_cmp);
        let mut all: Vec<f64> = measured.iter().map(|(l, _)| *l).collect();
        all.sort_by(f64::total_cmp);
        let med = net[net.len() / 2];
        let d = format!(
            "median {:.0} ms end of speech -> first audio ({:.0} ms without the {:.0} ms endpoint silence; target {:.0}) over {} turns",
            all[all.len() / 2],
            med,
            measured[0].1,
            opts.target_ms,
            all.len()
        );
        if med <= opts.target_ms {
            Ok(d)
        } else {
            Err(d)
        }
    };
    rep.push("latency", res);
    let _ = server.shutdown().await;
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_passes_and_fails() {
        let mut r = CheckReport::default();
        assert!(!r.passed(), "an empty check has not passed");
        r.push("codec", Ok("fine".into()));
        assert!(r.passed());
        r.push("latency", Err("900 ms".into()));
        assert!(!r.passed());
        let t = r.table();
        assert!(t.contains("\ncodec    PASS    fine\n"), "{t}");
        assert!(t.contains("\nlatency  FAIL    900 ms\n"), "{t}");
        assert!(t.ends_with("1 of 2 checks passed\n"), "{t}");
    }
}
