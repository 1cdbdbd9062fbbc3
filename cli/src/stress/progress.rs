//! The live progress line of a run.

use std::io::{self, IsTerminal};

use cport_mmo_client::{Errors, Second};

/// The live progress line: redrawn in place (indicatif) on a terminal, else a plain line a second.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: std::sync::Mutex<String>,
}

impl Progress {
    pub fn new() -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("template"));
            b
        });
        Progress {
            bar,
            last: Default::default(),
        }
    }

    pub fn show(&self, s: &Second, e: &Errors) {
        let line = format!(
            "{:>3.0}s clients {:>5} delay {:>3}ms p99 {:>4}ms in {:>6}/s out {:>5}/s err {}",
            s.t,
            s.clients,
            s.tracked_delay_ms,
            s.p99_ms,
            s.packets_in_per_s,
            s.packets_out_per_s,
            e.total()
        );
        match &self.bar {
            Some(b) => {
                *self.last.lock().expect("progress line") = line.clone();
                b.set_message(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            // Leave the last line as a plain line, so the report starts on a fresh one.
            b.finish_and_clear();
            eprintln!("{}", self.last.lock().expect("progress line"));
        }
    }
}
