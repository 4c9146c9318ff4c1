//! `export` and `backup list|verify|restore`: the commands that move data
//! out of a source or back into a directory, without a plan's apply.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::output::Output;
use crate::source::Source;

/// `lanceferry export`: one collection to a file, or several to a directory.
pub fn export(
    source: &dyn Source,
    plan_collections: Option<Vec<String>>,
    collection: Option<&str>,
    out_path: &Path,
    json: bool,
    out: &Output,
    stdout: &mut dyn Write,
) -> Result<()> {
    let rt = super::runtime()?;
    let names: Vec<String> = match (collection, plan_collections) {
        (Some(c), _) => vec![c.to_string()],
        (None, Some(p)) => p,
        (None, None) => rt
            .block_on(source.list_collections())?
            .into_iter()
            .map(|c| c.name)
            .collect(),
    };
    let file_name = out_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let to_file = file_name.ends_with(".jsonl") || file_name.ends_with(".gz");
    let targets: Vec<(String, PathBuf)> = if to_file {
        if names.len() != 1 {
            bail!(
                "`{}` is one file but {} collections are selected ({})\nhint: add `--collection NAME`, or give a directory as --out to write `<collection>.jsonl.gz` files",
                out_path.display(),
                names.len(),
                names.join(", ")
            );
        }
        vec![(names[0].clone(), out_path.to_path_buf())]
    } else {
        std::fs::create_dir_all(out_path)?;
        names
            .iter()
            .map(|n| (n.clone(), out_path.join(format!("{n}.jsonl.gz"))))
            .collect()
    };
    let terminal = out.stderr_is_terminal();
    let mut results = Vec::new();
    for (name, path) in targets {
        let total = rt.block_on(source.collection(&name))?.count;
        let bar = if terminal {
            let b = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>20} [{bar:30}] {pos}/{len} records  {per_sec}  eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(name.clone());
            b
        } else {
            eprintln!("export `{name}`: {total} records → {}", path.display());
            indicatif::ProgressBar::hidden()
        };
        let r = rt.block_on(crate::export::export_collection(
            source,
            &name,
            &path,
            1000,
            &mut |n| bar.set_position(n),
        ))?;
        bar.finish_and_clear();
        eprintln!(
            "exported `{}`: {} records, {:.1} MB → {}",
            r.collection,
            r.records,
            r.bytes as f64 / 1e6,
            r.path.display()
        );
        results.push(r);
    }
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

/// `lanceferry backup list`.
pub fn backup_list(dir: &Path, json: bool, stdout: &mut dyn Write) -> Result<()> {
    let entries = crate::backup::list(dir)?;
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no backups in `{}`", dir.display());
        return Ok(());
    }
    for e in entries {
        writeln!(
            stdout,
            "{:<26} {:<8} {:>10.1} MB  {}",
            e.taken.as_deref().unwrap_or("-"),
            match e.kind {
                crate::backup::BackupKind::Archive => "archive",
                crate::backup::BackupKind::Jsonl => "jsonl",
            },
            e.bytes as f64 / 1e6,
            e.path.display()
        )?;
    }
    Ok(())
}

/// `lanceferry backup verify`.
pub fn backup_verify(path: &Path, json: bool, stdout: &mut dyn Write) -> Result<()> {
    let v = crate::backup::verify(path)?;
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            stdout,
            "ok: {} files, {:.1} MB match the manifest of {}",
            v.files,
            v.bytes as f64 / 1e6,
            v.path.display()
        )?;
    }
    Ok(())
}

/// `lanceferry backup restore`.
pub fn backup_restore(
    path: &Path,
    to: &Path,
    force: bool,
    json: bool,
    stdout: &mut dyn Write,
) -> Result<()> {
    let r = crate::backup::restore(path, to, force)?;
    if let Some(aside) = &r.moved_aside {
        eprintln!(
            "the directory that was at `{}` is now `{}`",
            r.to.display(),
            aside.display()
        );
    }
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        writeln!(
            stdout,
            "restored {} files ({:.1} MB, verified against the manifest) into {}",
            r.files,
            r.bytes as f64 / 1e6,
            r.to.display()
        )?;
    }
    Ok(())
}
