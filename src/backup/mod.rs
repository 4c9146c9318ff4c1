//! Backups of the source, taken before any copy: for a Chroma persistent
//! directory a timestamped `.tar.gz` whose last entry, `MANIFEST.sha256`,
//! lists every file's SHA-256; for a Chroma server (no directory to archive)
//! a timestamped directory `<stem>-<stamp>-jsonl/` holding one
//! `<collection>.jsonl.gz` export per planned collection and the same kind
//! of manifest, which the `jsonl` source reads back.
//!
//! Either is written under a temporary name and renamed when complete, so a
//! backup that exists is whole; `keep: N` prunes the oldest of the same
//! stem afterwards. Listing, verifying and restoring live in `restore.rs`,
//! where every archive entry is checked before anything is written.

mod restore;

pub use restore::{BackupEntry, BackupKind, Restored, Verified, list, restore, verify};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of the manifest inside every backup.
pub const MANIFEST: &str = "MANIFEST.sha256";
/// The directory that holds the Chroma files inside an archive.
const ROOT: &str = "chroma";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "backup of `{source_dir}` into `{dir}`: {source}\nhint: check that `backup.dir` is writable and has room for a compressed copy of the Chroma directory"
    )]
    Io {
        source_dir: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot read backup `{path}`: {source}\nhint: check the path; `lanceferry backup list` shows the backups of a plan"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "backup `{archive}` holds an unsafe entry `{entry}`: {reason}\nhint: lanceferry never writes such entries; the archive was made by another tool or altered. Nothing was restored"
    )]
    Unsafe {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "backup `{archive}` does not match its manifest: {}{}\nhint: the archive is damaged; use an older backup (`lanceferry backup list`)",
        problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
        if problems.len() > 5 { format!("; and {} more", problems.len() - 5) } else { String::new() }
    )]
    Damaged {
        archive: PathBuf,
        problems: Vec<String>,
    },
    #[error(
        "`{to}` exists and is not empty\nhint: restore into a new directory, or add --force to move the existing one aside (it is renamed, not deleted)"
    )]
    TargetNotEmpty { to: PathBuf },
    #[error(
        "`{path}` is a JSON Lines backup of a Chroma server; it cannot be restored into a Chroma directory\nhint: {hint}"
    )]
    NotRestorable { path: PathBuf, hint: String },
    #[error(
        "`{path}` is not a lanceferry backup: {reason}\nhint: give a `.tar.gz` archive or a `-jsonl` directory from `backup.dir`"
    )]
    NotABackup { path: PathBuf, reason: String },
    #[error(
        "restoring into `{to}`: {source}\nhint: check that the parent directory is writable and has room; the existing directory, if any, was left as it was"
    )]
    Write {
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Export(#[from] crate::export::ExportError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupResult {
    pub archive: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub pruned: Vec<PathBuf>,
}

fn files_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Removes all but the newest `keep` backups named `<stem>-<stamp>…`
/// (archives and JSON Lines directories; names sort by time).
fn prune(dir: &Path, stem: &str, keep: u32) -> std::io::Result<Vec<PathBuf>> {
    let prefix = format!("{stem}-");
    let mut existing: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .is_some_and(|n| {
                    n.strip_prefix(&prefix).is_some_and(|rest| {
                        rest.starts_with(|c: char| c.is_ascii_digit())
                            && (n.ends_with(".tar.gz") || n.ends_with("-jsonl"))
                    })
                })
        })
        .collect();
    existing.sort();
    let mut pruned = Vec::new();
    while existing.len() > keep as usize {
        let old = existing.remove(0);
        if old.is_dir() {
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::remove_file(&old)?;
        }
        pruned.push(old);
    }
    Ok(pruned)
}

/// Writes the tar.gz of `files` (under `source_dir`) with its manifest to
/// `tmp`; the bytes archived.
fn write_archive(source_dir: &Path, files: &[PathBuf], tmp: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::create(tmp)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut manifest = String::new();
    let mut bytes = 0u64;
    for f in files {
        let rel = f.strip_prefix(source_dir).expect("under the root");
        // Read each file once: hashed on its way into the archive.
        let input = std::fs::File::open(f)?;
        let meta = input.metadata()?;
        // Never more than the header says, or the archive is malformed.
        let input = input.take(meta.len());
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        let mut hashing = HashingReader {
            inner: input,
            hasher: Sha256::new(),
            bytes: 0,
        };
        tar.append_data(&mut header, Path::new(ROOT).join(rel), &mut hashing)?;
        if hashing.bytes != meta.len() {
            return Err(std::io::Error::other(format!(
                "`{}` changed size while it was archived; the directory must not be written during the backup",
                f.display()
            )));
        }
        bytes += hashing.bytes;
        manifest.push_str(&format!(
            "{}  {}\n",
            hex::encode(hashing.hasher.finalize()),
            rel.display()
        ));
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, manifest.as_bytes())?;
    let gz = tar.into_inner()?;
    let mut file = gz.finish()?;
    file.flush()?;
    file.sync_all()?;
    Ok(bytes)
}

/// Archives `source_dir` into `dir`, then keeps only the newest `keep`.
pub fn create(source_dir: &Path, dir: &Path, keep: u32) -> Result<BackupResult, BackupError> {
    let wrap = |source| BackupError::Io {
        source_dir: source_dir.to_path_buf(),
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(wrap)?;
    let stem = source_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "chroma".into());
    let name = format!("{stem}-{}.tar.gz", stamp());
    let archive = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));

    let files = files_under(source_dir).map_err(wrap)?;
    let bytes = match write_archive(source_dir, &files, &tmp) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(wrap(e));
        }
    };
    std::fs::rename(&tmp, &archive).map_err(wrap)?;

    let pruned = prune(dir, &stem, keep).map_err(wrap)?;
    Ok(BackupResult {
        archive,
        files: files.len(),
        bytes,
        pruned,
    })
}

/// Exports each of `collections` from a server source into a new
/// `<stem>-<stamp>-jsonl/` directory in `dir` (with a manifest), then keeps
/// only the newest `keep`.
pub async fn create_jsonl(
    source: &dyn crate::source::Source,
    collections: &[String],
    stem: &str,
    dir: &Path,
    keep: u32,
) -> Result<BackupResult, BackupError> {
    let wrap = |source| BackupError::Io {
        source_dir: PathBuf::from(source_desc_for_errors(stem)),
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(wrap)?;
    let name = format!("{stem}-{}-jsonl", stamp());
    let out = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(wrap)?;
    let mut manifest = String::new();
    let mut bytes = 0;
    for c in collections {
        let file = format!("{c}.jsonl.gz");
        let path = tmp.join(&file);
        let r = crate::export::export_collection(source, c, &path, 1000, &mut |_| {}).await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
        };
        bytes += r.bytes;
        manifest.push_str(&format!(
            "{}  {file}\n",
            restore::sha256_file(&path).map_err(wrap)?
        ));
    }
    std::fs::write(tmp.join(MANIFEST), manifest).map_err(wrap)?;
    std::fs::rename(&tmp, &out).map_err(wrap)?;
    let pruned = prune(dir, stem, keep).map_err(wrap)?;
    Ok(BackupResult {
        archive: out,
        files: collections.len(),
        bytes,
        pruned,
    })
}

fn source_desc_for_errors(stem: &str) -> String {
    format!("chroma server ({stem})")
}

/// A file-name stem for a server URL: `http://127.0.0.1:8000` → `127.0.0.1-8000`.
pub fn url_stem(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.rsplit('@').next().unwrap_or(host);
    let stem: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if stem.is_empty() {
        "chroma-server".into()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_with_manifest_and_prunes() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("seg")).unwrap();
        std::fs::write(src.path().join("chroma.sqlite3"), b"db").unwrap();
        std::fs::write(src.path().join("seg/header.bin"), b"hdr").unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut last = None;
        for _ in 0..3 {
            let r = create(src.path(), out.path(), 2).unwrap();
            assert_eq!(r.files, 2);
            last = Some(r.archive);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let archives: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert_eq!(archives.len(), 2, "keep: 2");
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(last.unwrap()).unwrap(),
        ));
        let mut names = Vec::new();
        let mut manifest = String::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "MANIFEST.sha256" {
                e.read_to_string(&mut manifest).unwrap();
            }
            names.push(p);
        }
        assert!(
            names.contains(&"chroma/seg/header.bin".to_string()),
            "{names:?}"
        );
        let sha = hex::encode(Sha256::digest(b"db"));
        assert!(
            manifest.contains(&format!("{sha}  chroma.sqlite3")),
            "{manifest}"
        );
    }
}
