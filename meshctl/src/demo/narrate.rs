//! How the demo talks: narration to stdout (stderr when stdout carries the
//! JSON summary) and, on a terminal, a live line of call counts.

use std::io::IsTerminal;
use std::time::Duration;

use super::report::{share_text, shares};
use super::traffic::Traffic;

/// Narration: to stdout, or to stderr when stdout carries the JSON summary;
/// on a terminal a live line of counts under it.
pub(super) struct Narrator {
    to_stderr: bool,
    live: bool,
}

impl Narrator {
    pub(super) fn new(json: bool) -> Self {
        let live = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Self {
            to_stderr: json,
            live,
        }
    }

    fn write(&self, text: &str) {
        // Clear a live line first.
        let clear = if self.live { "\r\x1b[2K" } else { "" };
        if self.to_stderr {
            eprintln!("{clear}{text}");
        } else {
            println!("{clear}{text}");
        }
    }

    pub(super) fn say(&self, text: &str) {
        self.write(text);
    }

    pub(super) fn step(&self, name: &str, story: &str) {
        self.write(&format!("\n▶ {name}"));
        self.write(&wrap(story, 92, "  "));
    }

    pub(super) fn detail(&self, text: &str) {
        self.write(&format!("  · {text}"));
    }

    /// On a terminal: a line of running counts, redrawn while traffic flows.
    pub(super) fn ticker(&self, traffic: &Traffic) -> Option<Ticker> {
        if !self.live {
            return None;
        }
        let calls = traffic.shared();
        let to_stderr = self.to_stderr;
        Some(Ticker(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let line = {
                    let calls = calls.lock().expect("calls lock");
                    let failed = calls.iter().filter(|c| c.result.is_err()).count();
                    format!(
                        "\r\x1b[2K    calls {} · failed {failed} · served by {}",
                        calls.len(),
                        share_text(&shares(calls.iter()))
                    )
                };
                let mut out: Box<dyn std::io::Write> = if to_stderr {
                    Box::new(std::io::stderr())
                } else {
                    Box::new(std::io::stdout())
                };
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
        })))
    }
}

/// The live line's task; dropping it stops it.
pub(super) struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > width && !line.trim().is_empty() {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(indent);
        }
        line.push_str(word);
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out
}
