//! Listing, verifying and restoring backups.
//!
//! An archive is trusted for nothing: every entry's path must be relative,
//! without `..`, under `chroma/` (or be the manifest); only files,
//! directories and links whose target stays inside are accepted; every file
//! must be in the manifest with the same SHA-256, and every manifest line
//! must have its file. Restore extracts into a hidden staging directory
//! beside the target, never writing through a link, checks the manifest, and
//! only then moves an existing target aside (with `--force`; never deleted)
//! and renames the staging directory into place. A bad archive therefore
//! leaves the target exactly as it was.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BackupError, MANIFEST, ROOT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// `.tar.gz` of a Chroma persistent directory.
    Archive,
    /// `-jsonl/` directory of exports from a Chroma server.
    Jsonl,
}

/// One backup in a backup directory.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub path: PathBuf,
    pub kind: BackupKind,
    /// When it was taken (from its name, UTC).
    pub taken: Option<String>,
    pub bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub path: PathBuf,
    pub kind: BackupKind,
    pub files: usize,
    pub bytes: u64,
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub to: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// Where the directory that was there before now is.
    pub moved_aside: Option<PathBuf>,
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn kind_of(path: &Path) -> Option<BackupKind> {
    let name = path.file_name()?.to_string_lossy().to_string();
    if path.is_dir() && name.ends_with("-jsonl") {
        Some(BackupKind::Jsonl)
    } else if path.is_file() && name.ends_with(".tar.gz") {
        Some(BackupKind::Archive)
    } else {
        None
    }
}

/// The `YYYYmmddTHHMMSS.fffZ` stamp in a backup's name, as RFC 3339.
fn taken(name: &str) -> Option<String> {
    const LEN: usize = "20261126T031500.123Z".len();
    (0..=name.len().saturating_sub(LEN)).rev().find_map(|i| {
        let s = name.get(i..i + LEN)?;
        let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S%.3fZ").ok()?;
        Some(
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    })
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The backups in `dir`, oldest first. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<BackupEntry>, BackupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BackupError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue; // partial
        }
        let Some(kind) = kind_of(&path) else { continue };
        let bytes = match kind {
            BackupKind::Archive => e.metadata().map(|m| m.len()).unwrap_or(0),
            BackupKind::Jsonl => dir_size(&path),
        };
        out.push(BackupEntry {
            taken: taken(&name),
            path,
            kind,
            bytes,
        });
    }
    out.sort_by(|a, b| (&a.taken, &a.path).cmp(&(&b.taken, &b.path)));
    Ok(out)
}

fn parse_manifest(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let (hash, name) = line
            .split_once("  ")
            .ok_or_else(|| format!("manifest line {} is not `<sha256>  <path>`", i + 1))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("manifest line {} has no SHA-256", i + 1));
        }
        out.insert(name.to_string(), hash.to_ascii_lowercase());
    }
    Ok(out)
}

/// Compares what was found with the manifest; the list of differences.
fn compare(manifest: &BTreeMap<String, String>, found: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in manifest {
        match found.get(name) {
            None => problems.push(format!("`{name}` is missing")),
            Some(got) if got != want => problems.push(format!("`{name}` has a different SHA-256")),
            Some(_) => {}
        }
    }
    for name in found.keys() {
        if !manifest.contains_key(name) {
            problems.push(format!("`{name}` is not in the manifest"));
        }
    }
    problems
}

/// A checked relative path inside the archive's `chroma/` root, or the
/// manifest (`None`).
enum EntryPath {
    Manifest,
    File(PathBuf),
    Root,
}

fn check_path(archive: &Path, raw: &[u8]) -> Result<EntryPath, BackupError> {
    let text = String::from_utf8_lossy(raw).to_string();
    let unsafe_entry = |reason: &str| BackupError::Unsafe {
        archive: archive.to_path_buf(),
        entry: text.clone(),
        reason: reason.to_string(),
    };
    let path = Path::new(&text);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("it contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry("it is an absolute path"));
            }
        }
    }
    if parts.len() == 1 && parts[0].to_str() == Some(MANIFEST) {
        return Ok(EntryPath::Manifest);
    }
    if parts.first().is_none_or(|p| p.to_str() != Some(ROOT)) {
        return Err(unsafe_entry(&format!("it is outside `{ROOT}/`")));
    }
    if parts.len() == 1 {
        return Ok(EntryPath::Root);
    }
    Ok(EntryPath::File(parts[1..].iter().collect()))
}

/// A link target, resolved against the link's directory, must stay inside.
fn check_link(archive: &Path, entry: &Path, target: &[u8]) -> Result<PathBuf, BackupError> {
    let t = String::from_utf8_lossy(target).to_string();
    let unsafe_entry = |reason: String| BackupError::Unsafe {
        archive: archive.to_path_buf(),
        entry: format!("{} -> {t}", entry.display()),
        reason,
    };
    let target = Path::new(&t);
    if target.is_absolute() {
        return Err(unsafe_entry("a link to an absolute path".into()));
    }
    let mut depth: Vec<std::ffi::OsString> = entry
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(p) => depth.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return Err(unsafe_entry(
                        "a link that points outside the restored directory".into(),
                    ));
                }
            }
            _ => return Err(unsafe_entry("a link to an absolute path".into())),
        }
    }
    Ok(target.to_path_buf())
}

/// Refuses to write through a link: every existing ancestor of `path`
/// below `root` must be a real directory.
fn no_link_ancestors(root: &Path, rel: &Path) -> std::io::Result<bool> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}

/// Walks an archive, checking every entry; with `dest`, also extracts.
/// Returns (files, bytes) after comparing with the manifest.
fn walk_archive(archive: &Path, dest: Option<&Path>) -> Result<(usize, u64), BackupError> {
    let read_err = |source| BackupError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let write_err = |source| BackupError::Write {
        to: dest.map(Path::to_path_buf).unwrap_or_default(),
        source,
    };
    let file = std::fs::File::open(archive).map_err(read_err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut manifest: Option<String> = None;
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let entries = tar.entries().map_err(read_err)?;
    for entry in entries {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let checked = check_path(archive, &raw_path)?;
        let kind = entry.header().entry_type();
        let shown = String::from_utf8_lossy(&raw_path).to_string();
        match checked {
            EntryPath::Manifest => {
                if !kind.is_file() {
                    return Err(BackupError::Unsafe {
                        archive: archive.to_path_buf(),
                        entry: shown,
                        reason: "the manifest is not a regular file".into(),
                    });
                }
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(read_err)?;
                manifest = Some(text);
            }
            EntryPath::Root => {
                if !kind.is_dir() {
                    return Err(BackupError::Unsafe {
                        archive: archive.to_path_buf(),
                        entry: shown,
                        reason: format!("`{ROOT}` must be a directory"),
                    });
                }
            }
            EntryPath::File(rel) => {
                let key = rel.to_string_lossy().to_string();
                if let Some(d) = dest
                    && !no_link_ancestors(d, &rel).map_err(write_err)?
                {
                    return Err(BackupError::Unsafe {
                        archive: archive.to_path_buf(),
                        entry: shown,
                        reason: "it would be written through a link".into(),
                    });
                }
                if kind.is_file() {
                    let mut h = Sha256::new();
                    let mut out = match dest {
                        Some(d) => {
                            let p = d.join(&rel);
                            if let Some(parent) = p.parent() {
                                std::fs::create_dir_all(parent).map_err(write_err)?;
                            }
                            Some(std::fs::File::create(&p).map_err(write_err)?)
                        }
                        None => None,
                    };
                    loop {
                        let n = entry.read(&mut buf).map_err(read_err)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                        bytes += n as u64;
                        if let Some(o) = out.as_mut() {
                            std::io::Write::write_all(o, &buf[..n]).map_err(write_err)?;
                        }
                    }
                    found.insert(key, hex::encode(h.finalize()));
                } else if kind.is_dir() {
                    if let Some(d) = dest {
                        std::fs::create_dir_all(d.join(&rel)).map_err(write_err)?;
                    }
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| b.into_owned())
                        .unwrap_or_default();
                    if kind.is_symlink() {
                        let t = check_link(archive, &rel, &target)?;
                        if let Some(d) = dest {
                            let p = d.join(&rel);
                            if let Some(parent) = p.parent() {
                                std::fs::create_dir_all(parent).map_err(write_err)?;
                            }
                            std::os::unix::fs::symlink(&t, &p).map_err(write_err)?;
                        }
                    } else {
                        // A hard link names another entry by its archive path.
                        let EntryPath::File(t) = check_path(archive, &target)? else {
                            return Err(BackupError::Unsafe {
                                archive: archive.to_path_buf(),
                                entry: shown,
                                reason: "a hard link to something that is not a file of the backup"
                                    .into(),
                            });
                        };
                        let tkey = t.to_string_lossy().to_string();
                        let Some(hash) = found.get(&tkey).cloned() else {
                            return Err(BackupError::Unsafe {
                                archive: archive.to_path_buf(),
                                entry: shown,
                                reason: "a hard link to a file that is not earlier in the backup"
                                    .into(),
                            });
                        };
                        if let Some(d) = dest {
                            std::fs::hard_link(d.join(&t), d.join(&rel)).map_err(write_err)?;
                        }
                        found.insert(key, hash);
                    }
                } else {
                    return Err(BackupError::Unsafe {
                        archive: archive.to_path_buf(),
                        entry: shown,
                        reason: format!("entries of type {kind:?} are not accepted"),
                    });
                }
            }
        }
    }
    let Some(manifest) = manifest else {
        return Err(BackupError::Damaged {
            archive: archive.to_path_buf(),
            problems: vec![format!("it has no `{MANIFEST}`")],
        });
    };
    let manifest = parse_manifest(&manifest).map_err(|p| BackupError::Damaged {
        archive: archive.to_path_buf(),
        problems: vec![p],
    })?;
    let problems = compare(&manifest, &found);
    if !problems.is_empty() {
        return Err(BackupError::Damaged {
            archive: archive.to_path_buf(),
            problems,
        });
    }
    Ok((found.len(), bytes))
}

fn verify_jsonl(dir: &Path) -> Result<(usize, u64), BackupError> {
    let read_err = |source| BackupError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(read_err)?;
    let manifest = parse_manifest(&text).map_err(|p| BackupError::Damaged {
        archive: dir.to_path_buf(),
        problems: vec![p],
    })?;
    let mut found = BTreeMap::new();
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).map_err(read_err)? {
        let e = e.map_err(read_err)?;
        let name = e.file_name().to_string_lossy().to_string();
        if name == MANIFEST {
            continue;
        }
        bytes += e.metadata().map_err(read_err)?.len();
        found.insert(name, sha256_file(&e.path()).map_err(read_err)?);
    }
    let problems = compare(&manifest, &found);
    if !problems.is_empty() {
        return Err(BackupError::Damaged {
            archive: dir.to_path_buf(),
            problems,
        });
    }
    Ok((found.len(), bytes))
}

/// Re-hashes every file of a backup against its manifest.
pub fn verify(path: &Path) -> Result<Verified, BackupError> {
    let kind = kind_of(path).ok_or_else(|| BackupError::NotABackup {
        path: path.to_path_buf(),
        reason: if path.exists() {
            "neither a `.tar.gz` file nor a `-jsonl` directory".into()
        } else {
            "it does not exist".into()
        },
    })?;
    let (files, bytes) = match kind {
        BackupKind::Archive => walk_archive(path, None)?,
        BackupKind::Jsonl => verify_jsonl(path)?,
    };
    Ok(Verified {
        path: path.to_path_buf(),
        kind,
        files,
        bytes,
    })
}

/// Restores an archive into `to` (see the module notes for the guarantees).
pub fn restore(archive: &Path, to: &Path, force: bool) -> Result<Restored, BackupError> {
    match kind_of(archive) {
        Some(BackupKind::Archive) => {}
        Some(BackupKind::Jsonl) => {
            return Err(BackupError::NotRestorable {
                path: archive.to_path_buf(),
                hint: format!(
                    "migrate from it with a plan whose source is `jsonl: {{ path: {} }}`, or re-import the files into Chroma with its client",
                    archive.display()
                ),
            });
        }
        None => {
            // Not a backup at all: verify says why.
            verify(archive)?;
            unreachable!("verify accepts only backups");
        }
    }
    let write_err = |source| BackupError::Write {
        to: to.to_path_buf(),
        source,
    };
    let occupied = match std::fs::symlink_metadata(to) {
        Ok(m) if m.is_dir() => std::fs::read_dir(to).map_err(write_err)?.next().is_some(),
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(write_err(e)),
    };
    if occupied && !force {
        return Err(BackupError::TargetNotEmpty {
            to: to.to_path_buf(),
        });
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "chroma".into());
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(write_err)?;
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(write_err)?;
    let (files, bytes) = match walk_archive(archive, Some(&staging)) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let mut moved_aside = None;
    if occupied {
        let aside = parent.join(format!(
            "{name}.before-restore-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        std::fs::rename(to, &aside).map_err(write_err)?;
        moved_aside = Some(aside);
    } else if to.exists() {
        std::fs::remove_dir(to).map_err(write_err)?; // empty
    }
    std::fs::rename(&staging, to).map_err(write_err)?;
    Ok(Restored {
        to: to.to_path_buf(),
        files,
        bytes,
        moved_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_in_names_are_read() {
        assert_eq!(
            taken("chroma_db-20261126T031500.123Z.tar.gz").as_deref(),
            Some("2026-11-26T03:15:00.123Z")
        );
        assert_eq!(
            taken("127.0.0.1-8000-20261126T031500.123Z-jsonl").as_deref(),
            Some("2026-11-26T03:15:00.123Z")
        );
        assert_eq!(taken("other.tar.gz"), None);
    }

    #[test]
    fn link_targets_must_stay_inside() {
        let a = Path::new("a.tar.gz");
        assert!(check_link(a, Path::new("x/l"), b"../y").is_ok());
        assert!(check_link(a, Path::new("x/l"), b"../../y").is_err());
        assert!(check_link(a, Path::new("l"), b"/etc/passwd").is_err());
    }
}
