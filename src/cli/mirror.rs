//! `lanceferry mirror`: serve the proxy, drain its journal, or show its
//! statistics. The work is in [`crate::mirror`]; this is arguments and
//! printing.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use super::output::Output;
use super::{GlobalArgs, load, runtime};
use crate::mirror::{self, MirrorOptions, Status};

// `lanceferry mirror PLAN [--listen ADDR] ...` or `lanceferry mirror status
// PLAN` (the help text is the `Mirror` variant's doc comment).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MirrorArgs {
    #[command(subcommand)]
    command: Option<MirrorCommand>,
    /// The plan whose collections to mirror (the upstream is its `source.chroma.url`).
    #[arg(required = true)]
    plan: Option<PathBuf>,
    /// The address to listen on; loopback unless you say otherwise.
    #[arg(long, value_name = "HOST:PORT", default_value = mirror::DEFAULT_LISTEN)]
    listen: String,
    /// The Chroma server to forward to (default: the plan's `source.chroma.url`).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// The journal's size limit in MiB (default: the plan's `mirror.journal_max_mb`, else 256); when full, writes are forwarded unjournaled (stats: `dropped`).
    #[arg(long, value_name = "MB")]
    journal_max_mb: Option<u64>,
    /// Apply what the journal holds to LanceDB and exit, without serving.
    #[arg(long)]
    drain: bool,
    /// How long the writer gathers ready writes into one commit, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200, hide = true)]
    batch_window_ms: u64,
    /// Ids after which the writer commits without waiting.
    #[arg(long, value_name = "N", default_value_t = mirror::DEFAULT_BATCH_MAX_IDS, hide = true)]
    batch_max_ids: usize,
    /// Seconds a write whose upstream outcome is unknown (a crash, a 5xx) waits before it is read back.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    in_flight_grace: u64,
}

#[derive(Debug, Subcommand)]
enum MirrorCommand {
    /// The statistics of the running mirror of a plan (or, when none runs, what its journal holds).
    Status {
        /// The plan file.
        plan: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// The journal limit the mirror was started with, in MiB (for the report only; default: the plan's).
        #[arg(long, value_name = "MB")]
        journal_max_mb: Option<u64>,
    },
}

/// The journal's limit: the flag, else the plan's `mirror.journal_max_mb`,
/// else the default.
fn journal_limit(flag: Option<u64>, plan: &crate::plan::Plan) -> u64 {
    flag.or(plan.mirror_journal_max_mb)
        .unwrap_or(mirror::DEFAULT_JOURNAL_MAX_MB)
}

impl MirrorArgs {
    /// Whether this runs the proxy: a server, whose log (the line a
    /// minute, what it applies) is worth seeing by default.
    pub fn serves(&self) -> bool {
        self.command.is_none() && !self.drain
    }
}

pub(super) fn run(
    args: &MirrorArgs,
    global: &GlobalArgs,
    out: &Output,
    stdout: &mut impl Write,
) -> Result<ExitCode> {
    if let Some(MirrorCommand::Status {
        plan,
        json,
        journal_max_mb,
    }) = &args.command
    {
        let plan = load(plan, global, out)?;
        let max = journal_limit(*journal_max_mb, &plan);
        let status = runtime()?.block_on(mirror::status(&plan, max))?;
        return Ok(match status {
            Status::Running(stats) => {
                if *json {
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&stats)?)?;
                } else {
                    stdout.write_all(stats.render().as_bytes())?;
                }
                ExitCode::SUCCESS
            }
            Status::Stopped {
                info,
                pending,
                reason,
            } => {
                if *json {
                    let value = serde_json::json!({
                        "running": false,
                        "reason": reason,
                        "last": info,
                        "pending": pending.entries,
                        "pending_ids": pending.ids,
                        "journal_bytes": pending.bytes,
                        "by_collection": pending.by_collection,
                    });
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
                } else {
                    writeln!(
                        stdout,
                        "the mirror of plan `{}` is not running: {reason}",
                        plan.name
                    )?;
                    writeln!(
                        stdout,
                        "  its journal holds {} pending entr{} ({} ids, {} bytes){}",
                        pending.entries,
                        if pending.entries == 1 { "y" } else { "ies" },
                        pending.ids,
                        pending.bytes,
                        if pending.entries > 0 {
                            format!(
                                "; `lanceferry mirror {} --drain` applies them",
                                plan.file.display()
                            )
                        } else {
                            String::new()
                        }
                    )?;
                }
                // Scripts can tell "not running" from "running".
                ExitCode::from(1)
            }
        });
    }
    let Some(plan_path) = &args.plan else {
        bail!(
            "nothing to mirror\nhint: give a plan (`lanceferry mirror plans/demo.yaml --listen 127.0.0.1:8001`), or `lanceferry mirror status PLAN`"
        );
    };
    let plan = load(plan_path, global, out)?;
    let opts = MirrorOptions {
        listen: args.listen.clone(),
        upstream: args.upstream.clone(),
        journal_max_mb: journal_limit(args.journal_max_mb, &plan),
        batch_window: Duration::from_millis(args.batch_window_ms),
        batch_max_ids: args.batch_max_ids,
        in_flight_grace: Duration::from_secs(args.in_flight_grace),
    };
    let rt = runtime()?;
    if args.drain {
        let drained = rt.block_on(mirror::drain(plan, opts))?;
        writeln!(stdout, "{}", drained.render())?;
    } else {
        rt.block_on(mirror::serve(plan, opts))?;
    }
    Ok(ExitCode::SUCCESS)
}
