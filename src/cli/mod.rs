//! The command line: clap types, dispatch, printing and exit codes only.
//!
//! Every command loads its plan through `plan::load`, does its work through
//! the library, and prints data on stdout, everything else on stderr. Exit
//! codes: 0 success, 1 failure (including usage errors), 2 reserved for
//! "`plan` found changes" (`--detailed-exitcode`).

mod data;
mod mirror;
mod output;
mod progress;
mod sharded;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::graph::{Format, StepGraph};
use crate::plan::{self, LoadError, Plan, Vars};
use output::Output;

/// Declarative, reviewable, resumable migrations from ChromaDB to LanceDB.
#[derive(Debug, Parser)]
#[command(name = "lanceferry", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Set a plan variable (repeatable); wins over --var-file and the environment.
    #[arg(long = "var", value_name = "KEY=VALUE", global = true)]
    vars: Vec<String>,
    /// Read plan variables from a KEY=VALUE file (repeatable; later files win).
    #[arg(long = "var-file", value_name = "FILE", global = true)]
    var_files: Vec<PathBuf>,
    /// More log detail on stderr (-v info, -vv debug, -vvv trace); RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// When to color stderr output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Color on a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Proxy a Chroma server and mirror the writes on the plan's collections into LanceDB (dual writes during a cut-over).
    Mirror(mirror::MirrorArgs),
    /// Check a plan: syntax, schema, variables and meaning; touches neither store.
    Check {
        /// The plan file.
        plan: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the step graph `apply` would execute.
    Graph {
        /// The plan file.
        plan: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show what apply would do, and why, without writing anything (the dry run reviewers read).
    Plan {
        /// The plan file.
        plan: PathBuf,
        /// Output format: text (a terminal), markdown (a pull-request comment), json.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Exit 2 when apply would change something (0: no changes, 1: an error).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Exit 1 on lint findings of this severity or worse.
        #[arg(long, value_enum, default_value_t = FailOn::Error)]
        fail_on: FailOn,
        /// Where lint codes link to in Markdown (the address of docs/lint.md).
        #[arg(long, value_name = "URL", default_value = "docs/lint.md")]
        lint_docs: String,
        /// Save the plan with what it was made against; `apply FILE` applies exactly that.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Plan as `apply --allow-duplicates` would run (saved with the plan).
        #[arg(long)]
        allow_duplicates: bool,
    },
    /// Print a JSON Schema: of the plan format (schemas/plan.schema.json), or of `plan --format json` output.
    Schema {
        /// The schema of `lanceferry plan --format json` (schemas/plan-output.schema.json).
        #[arg(long)]
        plan_output: bool,
    },
    /// Execute the plan: back up, copy, index, validate, report; resumes an interrupted apply.
    Apply {
        /// The plan file, or a saved plan (`plan --out`), applied exactly and only if nothing moved.
        plan: PathBuf,
        /// Do not ask for confirmation (for CI and scripts).
        #[arg(long)]
        auto_approve: bool,
        /// Stop all work at the first failed step (default: let independent collections finish).
        #[arg(long)]
        fail_fast: bool,
        /// Seconds to wait for another apply of the same plan to release its lock.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        lock_timeout: u64,
        /// Let `mode: append` add records whose ids the table already holds.
        #[arg(long)]
        allow_duplicates: bool,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Sharded apply, 1 of 3: create the tables empty and record run RUN (counts, shard boundaries) beside the target (docs/scale-out.md).
        #[arg(
            long,
            value_name = "RUN",
            requires = "shards",
            conflicts_with_all = ["shard", "run", "commit", "allow_duplicates"]
        )]
        prepare: Option<String>,
        /// With --prepare: how many shards each collection is cut into.
        #[arg(
            long,
            value_name = "N",
            requires = "prepare",
            value_parser = clap::value_parser!(u32).range(1..=100_000)
        )]
        shards: Option<u32>,
        /// Sharded apply, 2 of 3: write shard K of N (K from 0) of every collection as uncommitted Lance files, and report them to run --run.
        #[arg(
            long,
            value_name = "K/N",
            requires = "run",
            conflicts_with_all = ["commit", "allow_duplicates"],
            value_parser = sharded::parse_shard
        )]
        shard: Option<sharded::ShardSpec>,
        /// The prepared run a --shard belongs to.
        #[arg(long, value_name = "RUN", requires = "shard")]
        run: Option<String>,
        /// Sharded apply, 3 of 3: once every shard reported, commit run RUN (one transaction per table), build the indexes, validate.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["allow_duplicates"])]
        commit: Option<String>,
    },
    /// Undo an apply: restore changed tables to their recorded version, drop created ones.
    Rollback {
        /// The plan file.
        plan: PathBuf,
        /// The apply to roll back (default: the latest).
        #[arg(long, value_name = "ID")]
        apply: Option<String>,
        /// Roll back even if tables were written after the apply.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        /// Seconds to wait for a running apply to release its lock.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        lock_timeout: u64,
    },
    /// Check every table against its source: counts, id sets, values, vector similarity.
    Verify {
        /// The plan file.
        plan: PathBuf,
        /// Print the results as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also write the JSON results to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Show a source's collections: counts, dimensions, spaces, metadata keys and their types.
    Inspect {
        #[command(flatten)]
        from: SourceArgs,
        /// Only this collection.
        #[arg(long, value_name = "NAME")]
        collection: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write collections as JSON Lines ({"doc_id","content","metadata","embedding"}), readable by the `jsonl` source.
    Export {
        #[command(flatten)]
        from: SourceArgs,
        /// Only this collection (default: the plan's collections, or all).
        #[arg(long, value_name = "NAME")]
        collection: Option<String>,
        /// A `.jsonl` or `.jsonl.gz` file for one collection, or a directory for several.
        #[arg(long, value_name = "FILE|DIR")]
        out: PathBuf,
        /// Print what was written as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List, verify and restore the backups taken before applies.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Clear the lock record left by apply ID after its process ended (a running holder cannot be unlocked).
    Unlock {
        /// The plan file.
        plan: PathBuf,
        /// The apply id named in the lock error.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// The backups in a plan's `backup.dir` (or --dir), oldest first.
    List {
        /// The plan whose backups to list (or use --dir).
        plan: Option<PathBuf>,
        /// A backup directory.
        #[arg(long, value_name = "DIR", conflicts_with = "plan")]
        dir: Option<PathBuf>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every file of a backup against its manifest.
    Verify {
        /// A `.tar.gz` archive or a `-jsonl` directory.
        backup: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore an archive into a directory (checked entry by entry, then against the manifest).
    Restore {
        /// A `.tar.gz` archive.
        backup: PathBuf,
        /// The directory to restore into; must be empty or absent unless --force.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Move a non-empty --to directory aside (renamed, never deleted) and restore.
        #[arg(long)]
        force: bool,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Where a command that reads a source without applying (`inspect`,
/// `export`) reads from: a plan's source, a directory, or a server.
#[derive(Debug, Args)]
struct SourceArgs {
    /// A plan whose source to read (or use --path / --url).
    plan: Option<PathBuf>,
    /// A Chroma persistent directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["plan", "url"])]
    path: Option<PathBuf>,
    /// A running Chroma server, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL", conflicts_with = "plan")]
    url: Option<String>,
    /// Chroma tenant for --url or --path.
    #[arg(long, conflicts_with = "plan", default_value = plan::model::DEFAULT_TENANT)]
    tenant: String,
    /// Chroma database for --url or --path.
    #[arg(long, conflicts_with = "plan", default_value = plan::model::DEFAULT_DATABASE)]
    database: String,
    /// The environment variable holding the token for --url (sent only if set).
    #[arg(
        long,
        requires = "url",
        default_value = "CHROMA_TOKEN",
        value_name = "VAR"
    )]
    token_var: String,
    /// The header that carries the token: x-chroma-token or authorization (Bearer).
    #[arg(long, requires = "url", default_value = "x-chroma-token", value_parser = parse_token_header)]
    token_header: plan::TokenHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FailOn {
    Warning,
    Error,
}

fn parse_token_header(s: &str) -> Result<plan::TokenHeader, String> {
    match s {
        "x-chroma-token" => Ok(plan::TokenHeader::XChromaToken),
        "authorization" => Ok(plan::TokenHeader::Authorization),
        _ => Err("expected `x-chroma-token` or `authorization`".into()),
    }
}

impl SourceArgs {
    fn source(&self, global: &GlobalArgs, out: &Output, command: &str) -> Result<plan::Source> {
        Ok(match (&self.plan, &self.path, &self.url) {
            (_, Some(p), _) => plan::Source::ChromaDir {
                path: p.clone(),
                tenant: self.tenant.clone(),
                database: self.database.clone(),
            },
            (_, _, Some(url)) => plan::Source::ChromaHttp {
                url: url.trim_end_matches('/').to_string(),
                tenant: self.tenant.clone(),
                database: self.database.clone(),
                token: std::env::var(&self.token_var)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(|t| plan::Secret::new(t, self.token_var.clone())),
                token_header: self.token_header,
                timeout_secs: plan::model::DEFAULT_TIMEOUT_SECS,
                ca_cert: None,
            },
            (Some(plan), None, None) => load(plan, global, out)?.source,
            (None, None, None) => anyhow::bail!(
                "nothing to {command}\nhint: give a plan (`lanceferry {command} plans/canvas.yaml`), a directory (`--path ./chroma_db`) or a server (`--url http://127.0.0.1:8000`)"
            ),
        })
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let out = Output::new(cli.global.color);
    // A serving mirror is a server: where it listens, its line a minute and
    // what it recovers are shown by default.
    let verbose = match &cli.command {
        Command::Mirror(m) if m.serves() => cli.global.verbose.max(1),
        _ => cli.global.verbose,
    };
    init_tracing(verbose);
    match run(cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Asks on a terminal; refuses without one unless `--auto-approve`.
fn apply_options(
    out: &Output,
    fail_fast: bool,
    lock_timeout: u64,
    allow_duplicates: bool,
    expect: Option<crate::engine::Expected>,
) -> crate::engine::ApplyOptions {
    crate::engine::ApplyOptions {
        fail_fast,
        lock_timeout: std::time::Duration::from_secs(lock_timeout),
        allow_duplicates,
        expect,
        progress: std::sync::Arc::new(progress::Progress::new(out.stderr_is_terminal())),
    }
}

/// Runs an apply and prints its summary (text or JSON); exit 1 unless ok.
fn run_apply(
    plan: Plan,
    opts: crate::engine::ApplyOptions,
    json: bool,
    stdout: &mut impl Write,
) -> Result<ExitCode> {
    let summary = runtime()?.block_on(crate::engine::apply(plan, opts))?;
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        stdout.write_all(output::apply_summary(&summary).as_bytes())?;
    }
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn confirm(auto_approve: bool, what: &str) -> Result<()> {
    use std::io::IsTerminal;
    if auto_approve {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {what} without confirmation: no terminal to ask on\nhint: pass `--auto-approve` to run non-interactively (CI, scripts)"
        );
    }
    eprint!("{what}\nDo you want to continue? Only `yes` is accepted: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        anyhow::bail!("cancelled; nothing was changed\nhint: answer `yes` to proceed");
    }
    Ok(())
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "lanceferry=info",
        2 => "lanceferry=debug",
        _ => "lanceferry=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}

fn vars(global: &GlobalArgs) -> Result<Vars> {
    Ok(Vars::from_env().with_cli(&global.var_files, &global.vars)?)
}

/// Loads a plan; on invalid plans the diagnostics are printed (with color
/// when allowed) and a short error is returned.
fn load(path: &Path, global: &GlobalArgs, out: &Output) -> Result<Plan> {
    match plan::load(path, &vars(global)?) {
        Ok(p) => Ok(p),
        Err(LoadError::Invalid(d)) => {
            out.diagnostics(&d);
            Err(output::Reported.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn run(cli: Cli, out: &Output) -> Result<ExitCode> {
    let stdout = &mut std::io::stdout().lock();
    match &cli.command {
        Command::Mirror(args) => return mirror::run(args, &cli.global, out, stdout),
        Command::Schema { plan_output } => {
            if *plan_output {
                stdout.write_all(crate::diff::json_schema_text().as_bytes())?;
            } else {
                stdout.write_all(crate::plan::spec::json_schema_text().as_bytes())?;
            }
        }
        Command::Plan {
            plan: plan_file,
            format,
            detailed_exitcode,
            fail_on,
            lint_docs,
            out: save_to,
            allow_duplicates,
        } => {
            let plan = load(plan_file, &cli.global, out)?;
            let rt = runtime()?;
            let opts = crate::diff::PlanOptions {
                allow_duplicates: *allow_duplicates,
            };
            let report = rt.block_on(crate::diff::plan(&plan, opts))?;
            if let Some(path) = save_to {
                let facts = rt.block_on(crate::diff::saved::current_facts(&plan))?;
                crate::diff::saved::save(
                    path,
                    plan_file,
                    &plan,
                    &vars(&cli.global)?,
                    facts,
                    &report,
                    opts,
                )?;
                eprintln!(
                    "saved the plan to `{}`; `lanceferry apply {}` applies exactly this",
                    path.display(),
                    path.display()
                );
            }
            match format {
                PlanFormat::Text => stdout
                    .write_all(crate::diff::render::text(&report, out.stdout_color()).as_bytes())?,
                PlanFormat::Markdown => stdout
                    .write_all(crate::diff::render::markdown(&report, lint_docs).as_bytes())?,
                PlanFormat::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?,
            }
            let s = &report.summary;
            let failing = match fail_on {
                FailOn::Error => s.errors,
                FailOn::Warning => s.errors + s.warnings,
            };
            if failing > 0 {
                eprintln!(
                    "error: {failing} lint finding{} at `--fail-on {}` or worse\nhint: fix the plan, or accept a finding for its collection with `nolint: [{{ code: ..., reason: \"...\" }}]` (docs/lint.md)",
                    if failing == 1 { "" } else { "s" },
                    match fail_on {
                        FailOn::Error => "error",
                        FailOn::Warning => "warning",
                    }
                );
                return Ok(ExitCode::from(1));
            }
            if *detailed_exitcode && report.has_changes() {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Check { plan, json } => {
            if *json {
                let result = plan::load(plan, &vars(&cli.global)?);
                let (value, ok) = output::check_json(plan, result)?;
                writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let plan = load(plan, &cli.global, out)?;
            let graph = StepGraph::compile(&plan);
            stdout.write_all(output::check_summary(&plan, &graph).as_bytes())?;
        }
        Command::Apply {
            plan,
            auto_approve,
            fail_fast,
            lock_timeout,
            allow_duplicates,
            json,
            prepare,
            shards,
            shard,
            run,
            commit,
        } => {
            // The sharded apply (docs/scale-out.md): its own three commands.
            if let Some(mode) = sharded::Mode::from_flags(prepare, *shards, shard, run, commit) {
                if crate::diff::saved::read(plan)?.is_some() {
                    anyhow::bail!(
                        "`{}` is a saved plan; --prepare, --shard and --commit take the plan file itself\nhint: run them with the plan the saved one was made from",
                        plan.display()
                    );
                }
                let plan = load(plan, &cli.global, out)?;
                return sharded::run(mode, plan, *auto_approve, *json, out, stdout);
            }
            // A saved plan (`plan --out`) is applied as reviewed, without a
            // question, and only to what it was made against.
            if let Some(saved) = crate::diff::saved::read(plan)? {
                // Exactly what was reviewed: its own variable values and
                // flags, nothing given now.
                if !cli.global.vars.is_empty() || !cli.global.var_files.is_empty() {
                    anyhow::bail!(
                        "`{}` is a saved plan: it applies with the variable values it was made with, so `--var` and `--var-file` are refused\nhint: to apply other values, run `lanceferry plan {} --out FILE` with them, review it, and apply that",
                        plan.display(),
                        saved.plan_file
                    );
                }
                if *allow_duplicates && !saved.allow_duplicates {
                    anyhow::bail!(
                        "`{}` was planned without `--allow-duplicates`\nhint: plan again with `--allow-duplicates`, review it, and apply that",
                        plan.display()
                    );
                }
                let vars = saved.vars();
                let plan_path = PathBuf::from(&saved.plan_file);
                let resolved = match plan::load_str(&saved.plan_yaml, &plan_path, &vars) {
                    Ok(p) => p,
                    Err(d) => {
                        out.diagnostics(&d);
                        return Err(output::Reported.into());
                    }
                };
                let expect = crate::engine::Expected {
                    facts: saved.facts.clone(),
                    path: plan.clone(),
                    plan_file: saved.plan_file.clone(),
                };
                let opts = apply_options(
                    out,
                    *fail_fast,
                    *lock_timeout,
                    saved.allow_duplicates,
                    Some(expect),
                );
                return run_apply(resolved, opts, *json, stdout);
            }
            let plan = load(plan, &cli.global, out)?;
            if !*auto_approve {
                // Like `terraform apply`: the plan first, then the question;
                // nothing to do asks nothing.
                use std::io::IsTerminal;
                if std::io::stdin().is_terminal() {
                    let report = runtime()?.block_on(crate::diff::plan(
                        &plan,
                        crate::diff::PlanOptions {
                            allow_duplicates: *allow_duplicates,
                        },
                    ))?;
                    eprint!("{}", crate::diff::render::text(&report, out.stderr_color()));
                    if report.has_changes() {
                        confirm(false, &format!("apply plan `{}`", plan.name))?;
                    }
                } else {
                    confirm(false, &format!("apply plan `{}`", plan.name))?;
                }
            }
            let opts = apply_options(out, *fail_fast, *lock_timeout, *allow_duplicates, None);
            return run_apply(plan, opts, *json, stdout);
        }
        Command::Rollback {
            plan,
            apply,
            force,
            auto_approve,
            lock_timeout,
        } => {
            let plan = load(plan, &cli.global, out)?;
            confirm(
                *auto_approve,
                &format!(
                    "roll back {} of plan `{}` in lancedb `{}`",
                    apply
                        .as_deref()
                        .map(|a| format!("apply `{a}`"))
                        .unwrap_or_else(|| "the latest apply".into()),
                    plan.name,
                    plan.target.uri
                ),
            )?;
            let summary = runtime()?.block_on(crate::engine::rollback::rollback(
                &plan,
                apply.as_deref(),
                *force,
                std::time::Duration::from_secs(*lock_timeout),
            ))?;
            if summary.already {
                writeln!(
                    stdout,
                    "apply `{}` was already rolled back; nothing to do",
                    summary.apply_id
                )?;
            } else {
                writeln!(stdout, "rolled back apply `{}`:", summary.apply_id)?;
                for (t, what) in &summary.tables {
                    writeln!(stdout, "  `{t}`: {what}")?;
                }
            }
        }
        Command::Verify { plan, json, report } => {
            let plan = load(plan, &cli.global, out)?;
            // Tables written in append mode had rows before; the last apply's
            // snapshot says how many.
            let store = crate::state::StateStore::for_plan(&plan);
            let mut before = std::collections::HashMap::new();
            if let Some(last) = store.load()?.applies.last() {
                for c in &plan.collections {
                    if let Some(v) = last
                        .step(&crate::state::StepKey::snapshot(&c.table))
                        .and_then(|s| s.version_before)
                    {
                        before.insert(c.table.clone(), v);
                    }
                }
            }
            let results = runtime()?.block_on(crate::verify::verify_plan(&plan, &before))?;
            let value = serde_json::to_value(&results)?;
            if let Some(path) = report {
                crate::state::write_atomic(path, &serde_json::to_vec_pretty(&value)?)?;
            }
            if *json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                stdout.write_all(crate::verify::render(&results).as_bytes())?;
            }
            let ok = results.iter().all(|r| r.ok());
            if !ok {
                eprintln!(
                    "hint: `lanceferry rollback {}` restores the tables to their state before the last apply; `lanceferry apply` re-copies",
                    plan.file.display()
                );
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Inspect {
            from,
            collection,
            json,
        } => {
            let spec = from.source(&cli.global, out, "inspect")?;
            let source = crate::source::open(&spec)?;
            let report = runtime()?.block_on(crate::source::inspect::inspect(
                source.as_ref(),
                collection.as_deref(),
            ))?;
            if *json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                stdout.write_all(crate::source::inspect::render(&report).as_bytes())?;
            }
        }
        Command::Export {
            from,
            collection,
            out: out_path,
            json,
        } => {
            let (spec, plan_collections) = match (&from.plan, &from.path, &from.url) {
                (Some(p), None, None) => {
                    let plan = load(p, &cli.global, out)?;
                    let names = plan.collections.iter().map(|c| c.source.clone()).collect();
                    (plan.source, Some(names))
                }
                _ => (from.source(&cli.global, out, "export")?, None),
            };
            let source = crate::source::open(&spec)?;
            data::export(
                source.as_ref(),
                plan_collections,
                collection.as_deref(),
                out_path,
                *json,
                out,
                stdout,
            )?;
        }
        Command::Backup(cmd) => match cmd {
            BackupCommand::List { plan, dir, json } => {
                let dir = match (plan, dir) {
                    (_, Some(d)) => d.clone(),
                    (Some(p), None) => match load(p, &cli.global, out)?.backup {
                        Some(b) => b.dir,
                        None => anyhow::bail!(
                            "plan `{}` has no `backup:` section\nhint: add `backup: {{ dir: ./backups }}` to take a backup before each apply, or give --dir",
                            p.display()
                        ),
                    },
                    (None, None) => anyhow::bail!(
                        "no backups named\nhint: give a plan (`lanceferry backup list plans/canvas.yaml`) or a directory (`--dir ./backups`)"
                    ),
                };
                data::backup_list(&dir, *json, stdout)?;
            }
            BackupCommand::Verify { backup, json } => data::backup_verify(backup, *json, stdout)?,
            BackupCommand::Restore {
                backup,
                to,
                force,
                json,
            } => data::backup_restore(backup, to, *force, *json, stdout)?,
        },
        Command::Unlock { plan, id } => {
            let plan = load(plan, &cli.global, out)?;
            let store = crate::state::StateStore::for_plan(&plan);
            let h = store.unlock(id)?;
            writeln!(
                stdout,
                "cleared the lock record of apply `{}` (pid {} on `{}`, no longer running)",
                h.apply_id, h.pid, h.host
            )?;
        }
        Command::Graph { plan, format } => {
            let plan = load(plan, &cli.global, out)?;
            let graph = StepGraph::compile(&plan);
            stdout.write_all(graph.render(*format).as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
