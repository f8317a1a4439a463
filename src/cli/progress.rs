//! Progress bars (indicatif) for builds; hidden when stderr is not a terminal or with --json.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipe::progress::Reporter;
use serde_json::Value;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
    passed: AtomicUsize,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            quiet,
            bar: Mutex::new(None),
            passed: AtomicUsize::new(0),
        }
    }
}

impl Reporter for Bars {
    fn stage_start(&self, stage: &str, total: usize, todo: usize) {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let pb = ProgressBar::with_draw_target(Some(total as u64), target);
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(super::term::printable(stage).into_owned());
        pb.set_position((total - todo) as u64);
        self.passed.store(0, Ordering::Relaxed);
        *self.bar.lock().unwrap() = Some(pb);
    }
    fn item_done(&self, _stage: &str, _item: &str, summary: &Value, _ours: bool) {
        if let Some(pb) = &*self.bar.lock().unwrap() {
            if summary.get("passed") == Some(&Value::Bool(true)) {
                let p = self.passed.fetch_add(1, Ordering::Relaxed) + 1;
                pb.set_message(format!("passed {p}"));
            }
            pb.inc(1);
        }
    }
    fn item_progress(&self, _stage: &str, _item: &str, done: u64, total: u64, message: &str) {
        // A long single item (training): the bar counts its steps instead of items.
        if let Some(pb) = &*self.bar.lock().unwrap() {
            pb.set_length(total);
            pb.set_position(done);
            pb.set_message(super::term::printable(message).into_owned());
        }
    }
    fn item_failed(&self, _stage: &str, item: &str, error: &str) {
        if let Some(pb) = &*self.bar.lock().unwrap() {
            pb.println(super::term::printable(&format!("failed: {item}: {error}")));
        }
    }
    fn stage_done(&self, _stage: &str) {
        if let Some(pb) = self.bar.lock().unwrap().take() {
            pb.finish_and_clear();
        }
    }
}
