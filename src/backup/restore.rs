//! Listing, verifying and restoring backups.
//!
//! An archive is trusted for nothing. Every entry's path must be UTF-8,
//! relative, without `..`, and under `chroma/` (or be the manifest); no
//! path may appear twice, nor be both a file and a directory. Every entry
//! must be a regular file or a directory: lanceferry's backups hold nothing
//! else, so symbolic links, hard links, devices and FIFOs are refused
//! outright rather than judged by where they point (each link of a chain
//! can look harmless on its own and the chain still lead out of the
//! target). Every file must be in the manifest with the same SHA-256, and
//! every manifest line must have its file.
//!
//! Restore reads the archive twice, through one open file. The first pass
//! writes nothing, not even the target's parent: it checks every entry,
//! hashes and sizes every file, reads the manifest (the last entry; it
//! carries no sizes, so it stays `sha256sum -c` compatible) and compares.
//! A truncated or damaged archive fails here. Only then is a fresh staging
//! directory made beside the target, and the second pass extracts into it:
//! each file is created new (`O_CREAT|O_EXCL`, which never follows a link)
//! and read for at most the size the first pass verified; an entry whose
//! type, size or bytes differ from the first pass (the file changed in
//! between) aborts, and the staging directory is removed. A gzip bomb
//! therefore costs CPU in the first pass but never disk. There is no
//! free-space check (the standard library has no `statvfs`); a full disk
//! fails the second pass, which removes what it wrote. Last, an existing
//! target is moved aside (with `--force`; never deleted) and the staging
//! directory renamed into place. A bad archive leaves the target exactly
//! as it was.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BackupError, MANIFEST, ROOT};

/// A manifest is one short line per file; anything larger is not one.
const MAX_MANIFEST: u64 = 16 << 20;
/// What may follow the end of the tar stream: tar pads to 10 KiB records.
const MAX_TRAILER: u64 = 1 << 20;

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
    let len = super::STAMP_LEN;
    (0..=name.len().saturating_sub(len)).rev().find_map(|i| {
        let t = super::parse_stamp(name.get(i..i + len)?)?;
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
        if out
            .insert(name.to_string(), hash.to_ascii_lowercase())
            .is_some()
        {
            return Err(format!(
                "manifest line {} lists `{name}` a second time",
                i + 1
            ));
        }
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

/// Where a checked entry goes: the manifest, the `chroma/` root itself, or
/// a normalized relative path inside it.
enum EntryPath {
    Manifest,
    Root,
    Inside(PathBuf),
}

fn check_path(archive: &Path, raw: &[u8]) -> Result<EntryPath, BackupError> {
    let unsafe_entry = |reason: &str| BackupError::Unsafe {
        archive: archive.to_path_buf(),
        entry: String::from_utf8_lossy(raw).into_owned(),
        reason: reason.to_string(),
    };
    // Manifest lines are UTF-8; two names that differ only in invalid
    // bytes would otherwise compare equal and one escape the check.
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(unsafe_entry("its name is not UTF-8"));
    };
    let mut parts = Vec::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(p) => parts.push(p),
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
    Ok(EntryPath::Inside(parts[1..].iter().collect()))
}

/// Why an entry is refused for its type; `None` for a regular file or a
/// directory, the only types lanceferry writes.
fn refused_type<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let kind = entry.header().entry_type();
    if kind.is_file() || kind.is_dir() {
        return None;
    }
    let target = entry
        .link_name_bytes()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    let what = if kind.is_symlink() {
        format!("a symbolic link (to `{target}`)")
    } else if kind.is_hard_link() {
        format!("a hard link (to `{target}`)")
    } else if kind.is_character_special() {
        "a character device".to_string()
    } else if kind.is_block_special() {
        "a block device".to_string()
    } else if kind.is_fifo() {
        "a FIFO".to_string()
    } else {
        format!("an entry of type {kind:?}")
    };
    Some(format!(
        "it is {what}; a backup holds only regular files and directories"
    ))
}

/// The paths met so far inside `chroma/`, to refuse one met twice, or a
/// path that is a file for one entry and a directory for another.
#[derive(Default)]
struct Seen {
    files: HashSet<PathBuf>,
    /// Directories named by an entry of their own.
    dirs: HashSet<PathBuf>,
    /// Directories that hold an entry.
    parents: HashSet<PathBuf>,
    manifest: bool,
    root: bool,
}

impl Seen {
    fn add(&mut self, rel: &Path, is_dir: bool) -> Result<(), &'static str> {
        if self.files.contains(rel) || self.dirs.contains(rel) {
            return Err("it appears twice");
        }
        if !is_dir && self.parents.contains(rel) {
            return Err("it is a file, but earlier entries are inside it");
        }
        for a in rel.ancestors().skip(1) {
            if a.as_os_str().is_empty() {
                break;
            }
            if self.files.contains(a) {
                return Err("it is inside an entry that is a file");
            }
            self.parents.insert(a.to_path_buf());
        }
        if is_dir {
            self.dirs.insert(rel.to_path_buf());
        } else {
            self.files.insert(rel.to_path_buf());
        }
        Ok(())
    }
}

/// What the first pass found and checked, entry by entry in archive
/// order; the second pass must meet exactly this.
#[derive(Debug, PartialEq, Eq)]
enum Planned {
    Manifest {
        size: u64,
    },
    Root,
    Dir(PathBuf),
    File {
        rel: PathBuf,
        size: u64,
        sha256: String,
    },
}

/// The first pass's result: an archive that matches its manifest.
struct Scan {
    planned: Vec<Planned>,
    files: usize,
    bytes: u64,
}

type TarReader<'f> = tar::Archive<GzDecoder<BufReader<&'f File>>>;

/// Reads the archive from its start. Both passes read the one file opened
/// by `restore`, so renaming another archive into its place in between
/// changes nothing.
fn open_tar(file: &File) -> std::io::Result<TarReader<'_>> {
    let mut f = file;
    f.rewind()?;
    Ok(tar::Archive::new(GzDecoder::new(BufReader::new(f))))
}

/// The first pass: checks every entry, hashes every file and compares with
/// the manifest. Writes nothing.
fn scan(archive: &Path, file: &File) -> Result<Scan, BackupError> {
    let read_err = |source| BackupError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let refuse = |entry: &str, reason: String| BackupError::Unsafe {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        reason,
    };
    let damaged = |problem: String| BackupError::Damaged {
        archive: archive.to_path_buf(),
        problems: vec![problem],
    };
    let mut tar = open_tar(file).map_err(read_err)?;
    let mut planned = Vec::new();
    let mut seen = Seen::default();
    let mut manifest: Option<Vec<u8>> = None;
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let checked = check_path(archive, &raw_path)?;
        if let Some(reason) = refused_type(&entry) {
            return Err(refuse(&shown, reason));
        }
        let is_dir = entry.header().entry_type().is_dir();
        let size = entry.size();
        if is_dir && size != 0 {
            return Err(refuse(&shown, "it is a directory with content".into()));
        }
        match checked {
            EntryPath::Manifest => {
                if is_dir {
                    return Err(refuse(&shown, "the manifest is not a regular file".into()));
                }
                if std::mem::replace(&mut seen.manifest, true) {
                    return Err(refuse(&shown, "it appears twice".into()));
                }
                if size > MAX_MANIFEST {
                    return Err(damaged(format!(
                        "`{MANIFEST}` is {size} bytes, too large for a manifest"
                    )));
                }
                let mut text = Vec::new();
                (&mut entry)
                    .take(MAX_MANIFEST)
                    .read_to_end(&mut text)
                    .map_err(read_err)?;
                if text.len() as u64 != size {
                    return Err(damaged(format!("the archive ends inside `{shown}`")));
                }
                manifest = Some(text);
                planned.push(Planned::Manifest { size });
            }
            EntryPath::Root => {
                if !is_dir {
                    return Err(refuse(&shown, format!("`{ROOT}` must be a directory")));
                }
                if std::mem::replace(&mut seen.root, true) {
                    return Err(refuse(&shown, "it appears twice".into()));
                }
                planned.push(Planned::Root);
            }
            EntryPath::Inside(rel) => {
                seen.add(&rel, is_dir)
                    .map_err(|reason| refuse(&shown, reason.to_string()))?;
                if is_dir {
                    planned.push(Planned::Dir(rel));
                    continue;
                }
                let mut h = Sha256::new();
                let mut n = 0u64;
                loop {
                    let k = entry.read(&mut buf).map_err(read_err)?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                if n != size {
                    return Err(damaged(format!("the archive ends inside `{shown}`")));
                }
                let sha256 = hex::encode(h.finalize());
                bytes += n;
                found.insert(rel.to_string_lossy().into_owned(), sha256.clone());
                planned.push(Planned::File { rel, size, sha256 });
            }
        }
    }
    // Reading to the end of the gzip stream checks its length and CRC, so
    // an archive cut short after its last entry fails too.
    let mut rest = tar.into_inner();
    let trailing = std::io::copy(&mut (&mut rest).take(MAX_TRAILER + 1), &mut std::io::sink())
        .map_err(read_err)?;
    if trailing > MAX_TRAILER {
        return Err(damaged(
            "more than 1 MiB of data follows the end of the tar archive".into(),
        ));
    }
    let Some(manifest) = manifest else {
        return Err(damaged(format!("it has no `{MANIFEST}`")));
    };
    let manifest =
        String::from_utf8(manifest).map_err(|_| damaged(format!("`{MANIFEST}` is not UTF-8")))?;
    let manifest = parse_manifest(&manifest).map_err(damaged)?;
    let problems = compare(&manifest, &found);
    if !problems.is_empty() {
        return Err(BackupError::Damaged {
            archive: archive.to_path_buf(),
            problems,
        });
    }
    Ok(Scan {
        planned,
        files: found.len(),
        bytes,
    })
}

/// The second pass: extracts into `dest`, a directory this restore just
/// made, exactly what [`scan`] checked (`to` names the target in errors).
/// Each file is read for at most the size the first pass verified; an
/// entry that differs from the first pass aborts. The caller removes
/// `dest` on error.
fn extract(
    archive: &Path,
    file: &File,
    scan: &Scan,
    dest: &Path,
    to: &Path,
) -> Result<(), BackupError> {
    let read_err = |source| BackupError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let write_err = |source| BackupError::Write {
        to: to.to_path_buf(),
        source,
    };
    let changed = |what: &str| BackupError::Damaged {
        archive: archive.to_path_buf(),
        problems: vec![format!(
            "{what} differs from when it was checked; the archive changed during the restore"
        )],
    };
    let mut tar = open_tar(file).map_err(read_err)?;
    let mut planned = scan.planned.iter();
    let mut buf = vec![0u8; 1 << 20];
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let what = format!("entry `{}`", String::from_utf8_lossy(&raw_path));
        let kind = entry.header().entry_type();
        let size = entry.size();
        let checked = check_path(archive, &raw_path)?;
        match (planned.next(), checked) {
            // Already read by the first pass; nothing to write.
            (Some(Planned::Manifest { size: want }), EntryPath::Manifest)
                if kind.is_file() && size == *want => {}
            (Some(Planned::Root), EntryPath::Root) if kind.is_dir() => {}
            (Some(Planned::Dir(want)), EntryPath::Inside(rel)) if kind.is_dir() && rel == *want => {
                std::fs::create_dir_all(dest.join(&rel)).map_err(write_err)?;
            }
            (
                Some(Planned::File {
                    rel: want,
                    size: want_size,
                    sha256,
                }),
                EntryPath::Inside(rel),
            ) if kind.is_file() && rel == *want && size == *want_size => {
                let path = dest.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(write_err)?;
                }
                // create_new is O_CREAT|O_EXCL: it fails on any existing
                // name, a symbolic link included, and never follows one.
                // That is what O_NOFOLLOW would add here, without a
                // per-architecture constant (std exposes none). The parents
                // are directories this restore made, since no archive entry
                // can be a link.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(write_err)?;
                let mut h = Sha256::new();
                let mut n = 0u64;
                let mut limited = (&mut entry).take(*want_size);
                loop {
                    let k = limited.read(&mut buf).map_err(read_err)?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                    out.write_all(&buf[..k]).map_err(write_err)?;
                }
                if n != *want_size || hex::encode(h.finalize()) != *sha256 {
                    return Err(changed(&what));
                }
            }
            _ => return Err(changed(&what)),
        }
    }
    if planned.next().is_some() {
        return Err(changed("the archive's length"));
    }
    Ok(())
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
        BackupKind::Archive => {
            let file = File::open(path).map_err(|source| BackupError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let s = scan(path, &file)?;
            (s.files, s.bytes)
        }
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

    // Pass 1 writes nothing: a bad, truncated or hostile archive stops here.
    let file = File::open(archive).map_err(|source| BackupError::Read {
        path: archive.to_path_buf(),
        source,
    })?;
    let checked = scan(archive, &file)?;

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
    // A leftover of an earlier run of this pid; `remove_dir_all` removes a
    // link, not what it points to, and `create_dir` then makes a new one.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(write_err)?;
    let abandon = |e: BackupError| {
        let _ = std::fs::remove_dir_all(&staging);
        e
    };
    extract(archive, &file, &checked, &staging, to).map_err(abandon)?;

    let mut moved_aside = None;
    if occupied {
        let aside = parent.join(format!(
            "{name}.before-restore-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        std::fs::rename(to, &aside).map_err(|e| abandon(write_err(e)))?;
        moved_aside = Some(aside);
    } else if to.exists() {
        std::fs::remove_dir(to).map_err(|e| abandon(write_err(e)))?; // empty
    }
    if let Err(e) = std::fs::rename(&staging, to) {
        // Put the previous directory back where it was.
        if let Some(aside) = &moved_aside {
            let _ = std::fs::rename(aside, to);
        }
        return Err(abandon(write_err(e)));
    }
    Ok(Restored {
        to: to.to_path_buf(),
        files: checked.files,
        bytes: checked.bytes,
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

    /// A lanceferry-style archive of `files` (paths inside `chroma/`) with
    /// the manifest `manifest_of` lists.
    fn archive(path: &Path, files: &[(&str, &[u8])], manifest_of: &[(&str, &[u8])]) {
        let f = File::create(path).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        let mut manifest = String::new();
        for (name, data) in manifest_of {
            manifest.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
        }
        let mut all: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, d)| (format!("{ROOT}/{n}"), *d))
            .collect();
        all.push((MANIFEST.to_string(), manifest.as_bytes()));
        for (name, data) in all {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }

    #[test]
    fn the_second_pass_refuses_an_archive_that_changed_after_the_check() {
        let tmp = tempfile::tempdir().unwrap();
        let checked = tmp.path().join("checked.tar.gz");
        archive(&checked, &[("a", &b"small"[..])], &[("a", &b"small"[..])]);
        let s = scan(&checked, &File::open(&checked).unwrap()).unwrap();
        assert_eq!((s.files, s.bytes), (1, 5));

        // Swapped for a bigger entry: refused on its header, before a byte
        // of it is written.
        let big = vec![7u8; 1 << 20];
        let grown = tmp.path().join("grown.tar.gz");
        archive(&grown, &[("a", &big[..])], &[("a", &b"small"[..])]);
        let dest = tmp.path().join("dest-grown");
        std::fs::create_dir(&dest).unwrap();
        let err = extract(&grown, &File::open(&grown).unwrap(), &s, &dest, &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed during the restore"), "{err}");
        assert!(!dest.join("a").exists());

        // Same size, other bytes: refused by the hash.
        let edited = tmp.path().join("edited.tar.gz");
        archive(&edited, &[("a", &b"SMALL"[..])], &[("a", &b"small"[..])]);
        let dest = tmp.path().join("dest-edited");
        std::fs::create_dir(&dest).unwrap();
        let err = extract(&edited, &File::open(&edited).unwrap(), &s, &dest, &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`chroma/a` differs"), "{err}");

        // The archive that was checked extracts.
        let dest = tmp.path().join("dest-same");
        std::fs::create_dir(&dest).unwrap();
        extract(&checked, &File::open(&checked).unwrap(), &s, &dest, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"small");
    }

    #[test]
    fn a_path_is_met_once_and_is_a_file_or_a_directory() {
        let mut seen = Seen::default();
        seen.add(Path::new("d/f"), false).unwrap();
        seen.add(Path::new("d"), true).unwrap();
        assert_eq!(seen.add(Path::new("d"), true), Err("it appears twice"));
        assert_eq!(seen.add(Path::new("d/f"), false), Err("it appears twice"));
        assert!(seen.add(Path::new("d/f/g"), false).is_err());
        assert!(seen.add(Path::new("d"), false).is_err());
        seen.add(Path::new("e"), false).unwrap();
        assert!(seen.add(Path::new("e/x"), true).is_err());
    }

    #[test]
    fn names_are_normalized_before_they_are_compared() {
        let a = Path::new("a.tar.gz");
        for raw in ["chroma/x", "./chroma/x", "chroma//x", "chroma/./x/"] {
            match check_path(a, raw.as_bytes()) {
                Ok(EntryPath::Inside(p)) => assert_eq!(p, PathBuf::from("x"), "{raw}"),
                _ => panic!("{raw} is inside"),
            }
        }
        assert!(matches!(
            check_path(a, b"./MANIFEST.sha256"),
            Ok(EntryPath::Manifest)
        ));
        assert!(check_path(a, b"chroma/\xff").is_err());
    }

    #[test]
    fn a_manifest_may_not_list_a_name_twice() {
        let h = "0".repeat(64);
        let err = parse_manifest(&format!("{h}  a\n{h}  a\n")).unwrap_err();
        assert!(err.contains("second time"), "{err}");
    }
}
