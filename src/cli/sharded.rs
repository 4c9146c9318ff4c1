//! `apply --prepare RUN --shards N`, `apply --shard K/N --run RUN` and
//! `apply --commit RUN`: the sharded apply (docs/scale-out.md). Printing
//! and exit codes only; the work is in `crate::shard`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;

use super::output::Output;
use crate::plan::Plan;

/// `--shard K/N`: shard K (from 0) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub k: u32,
    pub n: u32,
}

/// Parses `K/N` with `0 <= K < N`.
pub fn parse_shard(s: &str) -> Result<ShardSpec, String> {
    let bad = || format!("`{s}` is not K/N (shard K of N, K from 0 to N-1), e.g. `0/4`");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let k: u32 = k.trim().parse().map_err(|_| bad())?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok(ShardSpec { k, n })
}

/// Which of the three a sharded `apply` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Prepare { run: String, shards: u32 },
    Shard { run: String, spec: ShardSpec },
    Commit { run: String },
}

impl Mode {
    /// From `apply`'s flags (clap has already refused the combinations
    /// that make no sense); `None`: a plain apply.
    pub fn from_flags(
        prepare: &Option<String>,
        shards: Option<u32>,
        shard: &Option<ShardSpec>,
        run: &Option<String>,
        commit: &Option<String>,
    ) -> Option<Mode> {
        match (prepare, shard, commit) {
            (Some(run), _, _) => Some(Mode::Prepare {
                run: run.clone(),
                shards: shards.unwrap_or(1),
            }),
            (_, Some(spec), _) => Some(Mode::Shard {
                run: run.clone().unwrap_or_default(),
                spec: *spec,
            }),
            (_, _, Some(run)) => Some(Mode::Commit { run: run.clone() }),
            _ => None,
        }
    }
}

/// Runs one of the three and prints what it did: a summary on stdout
/// (JSON with `--json`), progress on stderr. Exit 1 on a failed validation.
pub fn run(
    mode: Mode,
    plan: Plan,
    auto_approve: bool,
    json: bool,
    out: &Output,
    stdout: &mut impl Write,
) -> Result<ExitCode> {
    let progress: Arc<dyn crate::engine::CopyProgress> =
        Arc::new(super::progress::Progress::new(out.stderr_is_terminal()));
    let rt = super::runtime()?;
    match mode {
        Mode::Prepare { run, shards } => {
            super::confirm(
                auto_approve,
                &format!(
                    "prepare run `{run}` of plan `{}` in {shards} shards: create its tables, empty, in lancedb `{}`",
                    plan.name, plan.target.uri
                ),
            )?;
            let r = rt.block_on(crate::shard::prepare(
                &plan,
                &run,
                shards,
                progress.as_ref(),
            ))?;
            if json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
            } else if r.already {
                writeln!(
                    stdout,
                    "run `{run}` was already prepared ({} shards) at `{}`; nothing to do",
                    r.manifest.shards, r.location
                )?;
            } else {
                writeln!(
                    stdout,
                    "prepared run `{run}`: {} shards at `{}`",
                    r.manifest.shards, r.location
                )?;
                for c in &r.manifest.collections {
                    writeln!(
                        stdout,
                        "  `{}`: {} records, table at version {}",
                        c.table, c.count, c.start_version
                    )?;
                }
                writeln!(
                    stdout,
                    "next: `lanceferry apply {} --shard K/{} --run {run}` for K = 0 .. {}, then `--commit {run}`",
                    plan.file.display(),
                    r.manifest.shards,
                    r.manifest.shards - 1
                )?;
            }
        }
        Mode::Shard { run, spec } => {
            // A worker writes nothing anyone sees before the commit, and
            // runs unattended (a Job's pod): it does not ask.
            let r = rt.block_on(crate::shard::shard(
                &plan,
                &run,
                spec.k,
                spec.n,
                progress.clone(),
            ))?;
            if json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                writeln!(
                    stdout,
                    "shard {}/{} of run `{run}` written (uncommitted) and reported as attempt `{}`:",
                    r.shard, r.shards, r.attempt
                )?;
                for t in &r.tables {
                    writeln!(
                        stdout,
                        "  `{}`: records [{}, {}): {} rows in {} fragment(s){}",
                        t.table,
                        t.start,
                        t.end,
                        t.rows,
                        t.fragments,
                        if t.skipped > 0 {
                            format!(", {} skipped", t.skipped)
                        } else {
                            String::new()
                        }
                    )?;
                }
            }
        }
        Mode::Commit { run } => {
            super::confirm(
                auto_approve,
                &format!(
                    "commit run `{run}` of plan `{}` into lancedb `{}`",
                    plan.name, plan.target.uri
                ),
            )?;
            let r = rt.block_on(crate::shard::commit(&plan, &run, progress.clone()))?;
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            if json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                writeln!(stdout, "run `{run}` ({} shards):", r.shards)?;
                for t in &r.tables {
                    let how = match (t.committed_version, t.committed_now) {
                        (Some(v), true) => format!("committed as version {v}"),
                        (Some(v), false) => {
                            format!("already committed by this run at version {v}")
                        }
                        (None, _) => "nothing to commit".into(),
                    };
                    writeln!(
                        stdout,
                        "  `{}`: {} rows {how}; now at version {}; {}",
                        t.table, t.rows, t.version, t.validation
                    )?;
                }
            }
            if !r.ok {
                eprintln!(
                    "error: validation of run `{run}` found breaches (listed above)\nhint: inspect the tables (`lanceferry verify {}`); the tables were created by `--prepare`, so dropping them and preparing a new run starts over",
                    plan.file.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_k_of_n_from_zero() {
        assert_eq!(parse_shard("0/4"), Ok(ShardSpec { k: 0, n: 4 }));
        assert_eq!(parse_shard("3/4"), Ok(ShardSpec { k: 3, n: 4 }));
        for bad in ["4/4", "1/0", "a/4", "1", "-1/4", "1/4/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
