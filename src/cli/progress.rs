//! Copy and index-build progress on stderr: bars on a terminal, plain
//! lines otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::CopyProgress;
use crate::target::StageProgress;

#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
    tables: Mutex<HashMap<String, (ProgressBar, Instant, u64)>>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Progress {
            bars: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            tables: Mutex::new(HashMap::new()),
        }
    }
}

impl CopyProgress for Progress {
    fn start(&self, table: &str, total: u64, already: u64) {
        let bar = match &self.bars {
            Some(m) => {
                let b = m.add(ProgressBar::new(total));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>20} [{bar:30}] {pos}/{len} rows  {rate}  eta {eta}",
                    )
                    .expect("valid template")
                    // Whole rows a second with separators (`30,490 rows/s`),
                    // not indicatif's `30489.9661/s`.
                    .with_key(
                        "rate",
                        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(
                                w,
                                "{} rows/s",
                                crate::diff::render::thousands(s.per_sec().round() as u64)
                            );
                        },
                    )
                    .progress_chars("=> "),
                );
                b.set_prefix(table.to_string());
                b.set_position(already);
                b
            }
            None => {
                eprintln!(
                    "copy `{table}`: {total} records in the source{}",
                    if already > 0 {
                        format!(", {already} already committed")
                    } else {
                        String::new()
                    }
                );
                ProgressBar::hidden()
            }
        };
        self.tables
            .lock()
            .expect("progress lock")
            .insert(table.to_string(), (bar, Instant::now(), 0));
    }

    fn advance(&self, table: &str, rows: u64) {
        if let Some((bar, _, n)) = self.tables.lock().expect("progress lock").get_mut(table) {
            bar.inc(rows);
            *n += rows;
        }
    }

    fn finish(&self, table: &str) {
        if let Some((bar, started, n)) = self.tables.lock().expect("progress lock").remove(table) {
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "copy `{table}`: {} rows written in {secs:.1}s ({} rows/s)",
                crate::diff::render::thousands(n),
                crate::diff::render::thousands((n as f64 / secs.max(1e-9)).round() as u64)
            );
        }
    }

    fn message(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn index_stages(&self, label: &str) -> Option<Arc<dyn StageProgress>> {
        Some(Arc::new(IndexStages {
            label: label.to_string(),
            bars: self.bars.clone(),
            bar: Mutex::new(None),
            started: Instant::now(),
        }))
    }
}

/// One index build's stages: a bar for the current stage on a terminal
/// (`train_ivf [=====>   ] 31/50 iterations`, or a spinner when Lance
/// gives no total), one line a stage otherwise, so a log shows where a
/// long build is.
#[derive(Debug)]
struct IndexStages {
    label: String,
    bars: Option<MultiProgress>,
    bar: Mutex<Option<ProgressBar>>,
    started: Instant,
}

impl StageProgress for IndexStages {
    fn stage_start(&self, stage: &str, total: Option<u64>, unit: &str) {
        let Some(m) = &self.bars else {
            let of = match total {
                Some(n) if !unit.is_empty() => format!(" ({n} {unit})"),
                _ => String::new(),
            };
            eprintln!(
                "index `{}`: {stage}{of} at {:.1}s",
                self.label,
                self.started.elapsed().as_secs_f64()
            );
            return;
        };
        let bar = match total {
            Some(n) => m.add(ProgressBar::new(n)).with_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:>20}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{elapsed}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => {
                let b = m.add(ProgressBar::new_spinner()).with_style(
                    ProgressStyle::with_template("{prefix:>20} {msg} {spinner}  {elapsed}")
                        .expect("valid template"),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            }
        };
        bar.set_prefix(self.label.clone());
        bar.set_message(stage.to_string());
        if let Some(old) = self.bar.lock().expect("index bar lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn stage_progress(&self, _stage: &str, done: u64) {
        if let Some(b) = &*self.bar.lock().expect("index bar lock") {
            b.set_position(done);
        }
    }

    fn stage_done(&self, _stage: &str) {
        if let Some(b) = self.bar.lock().expect("index bar lock").take() {
            b.finish_and_clear();
        }
    }
}
