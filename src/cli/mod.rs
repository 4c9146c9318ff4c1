//! The command line: clap types, dispatch, printing and exit codes only.
//!
//! Every command loads its plan through `plan::load`, does its work through
//! the library, and prints data on stdout, everything else on stderr. Exit
//! codes: 0 success, 1 failure (including usage errors), 2 reserved for
//! "`plan` found changes" (`--detailed-exitcode`).

mod output;

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
    /// Print the plan format's JSON Schema (the content of schemas/plan.schema.json).
    Schema,
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
    init_tracing(cli.global.verbose);
    match run(cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::from(1)
        }
    }
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
        Command::Schema => {
            stdout.write_all(crate::plan::spec::json_schema_text().as_bytes())?;
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
        Command::Graph { plan, format } => {
            let plan = load(plan, &cli.global, out)?;
            let graph = StepGraph::compile(&plan);
            stdout.write_all(graph.render(*format).as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
