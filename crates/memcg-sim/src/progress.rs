//! A progress bar that stays hidden unless stderr is a terminal and the
//! run has already taken a second.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of a long loop; cheap to tick when hidden.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    label: String,
    start: Instant,
    terminal: bool,
    done: u64,
}

impl Progress {
    /// Progress over `total` units, labelled `label`.
    pub fn new(total: u64, label: &str) -> Progress {
        Progress {
            bar: None,
            total,
            label: label.to_string(),
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            done: 0,
        }
    }

    /// Marks `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        // Look at the clock only now and then.
        if self.terminal && self.done % 1024 < n && self.start.elapsed() > Duration::from_secs(1) {
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            bar.set_position(self.done);
            self.bar = Some(bar);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
