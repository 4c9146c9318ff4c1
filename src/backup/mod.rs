//! Backups of the source, taken before any copy: for a Chroma persistent
//! directory a timestamped `.tar.gz` whose last entry, `MANIFEST.sha256`,
//! lists every file's SHA-256 (`sha256sum -c` reads it); for a Chroma
//! server (no directory to archive) a timestamped directory
//! `<stem>-<stamp>-jsonl/` holding one `<collection>.jsonl.gz` export per
//! planned collection and the same kind of manifest, which the `jsonl`
//! source reads back. [`take`] picks the kind for a plan's source.
//!
//! The directory may be in use by a Chroma server while it is archived, so
//! `chroma.sqlite3` is not copied byte for byte (a commit during the copy
//! would tear it, and recent commits may still be only in its `-wal` file):
//! SQLite's `VACUUM INTO` writes a consistent snapshot of it, in one read
//! transaction, to a temporary file beside the archive; the snapshot is
//! archived under the database's name and removed afterwards, and the
//! `-wal`, `-shm` and `-journal` files are left out, their content being in
//! the snapshot. (`VACUUM INTO` rather than the online backup API, which
//! needs a rusqlite feature this crate does not enable; the result is the
//! same database, compacted.) The other files are copied as they are; one
//! that changes size while it is read fails the backup.
//!
//! Either kind is written under a temporary name and renamed when complete,
//! so a backup that exists is whole; `keep: N` then prunes the oldest
//! backups of the same stem, matching names exactly (`<stem>-<stamp>.tar.gz`
//! or `<stem>-<stamp>-jsonl`), so the backups of a directory `chroma-2` are
//! never taken for old backups of `chroma`. The blocking work (gzip,
//! SHA-256, removing old backups) runs on blocking threads when called from
//! async code. Listing, verifying and restoring live in `restore.rs`, where
//! every archive entry is checked before anything is written.

mod restore;

pub use restore::{BackupEntry, BackupKind, Restored, Verified, list, restore, verify};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of the manifest inside every backup.
pub const MANIFEST: &str = "MANIFEST.sha256";
/// The directory that holds the Chroma files inside an archive.
const ROOT: &str = "chroma";
/// Chroma's SQLite database, at the top of its directory.
const SQLITE: &str = "chroma.sqlite3";
/// SQLite's companions of [`SQLITE`]: their content is in the snapshot.
const SQLITE_SIDE_FILES: [&str; 3] = [
    "chroma.sqlite3-wal",
    "chroma.sqlite3-shm",
    "chroma.sqlite3-journal",
];
/// The time stamp in backup names: UTC, so names sort by time.
const STAMP_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
/// The length of a stamp, `20261126T031500.123Z`.
const STAMP_LEN: usize = 20;

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
    #[error(
        "cannot take a consistent snapshot of `{db}`: {reason}\nhint: check that it is a SQLite database this user can read and that `backup.dir` has room for a copy of it; if a Chroma server held a write lock for long, run the apply again"
    )]
    Snapshot { db: PathBuf, reason: String },
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
    chrono::Utc::now().format(STAMP_FORMAT).to_string()
}

/// The time in `s` when it is exactly a stamp written by [`stamp`].
fn parse_stamp(s: &str) -> Option<chrono::NaiveDateTime> {
    // The shape first: chrono alone would accept a sign or a short field.
    let shape = s.len() == STAMP_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'.',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(s, STAMP_FORMAT).ok()
}

/// Whether `name` is exactly the name of a backup of `stem`:
/// `<stem>-<stamp>.tar.gz` or `<stem>-<stamp>-jsonl`. A prefix is not
/// enough: `chroma-2-<stamp>.tar.gz` belongs to a directory `chroma-2`,
/// not to `chroma`.
fn is_backup_of(stem: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match (rest.get(..STAMP_LEN), rest.get(STAMP_LEN..)) {
        (Some(when), Some(suffix)) => {
            (suffix == ".tar.gz" || suffix == "-jsonl") && parse_stamp(when).is_some()
        }
        _ => false,
    }
}

/// Removes all but the newest `keep` backups of `stem` (archives and JSON
/// Lines directories; names sort by time).
fn prune(dir: &Path, stem: &str, keep: u32) -> std::io::Result<Vec<PathBuf>> {
    let mut existing: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| is_backup_of(stem, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    existing.sort();
    let mut pruned = Vec::new();
    while existing.len() > keep as usize {
        let old = existing.remove(0);
        // Not `is_dir`, which follows a link: a link is removed, never
        // what it points to.
        if std::fs::symlink_metadata(&old)?.is_dir() {
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::remove_file(&old)?;
        }
        pruned.push(old);
    }
    Ok(pruned)
}

/// Runs blocking file work (hashing, removing old backups) off the async
/// runtime, so a large backup does not stall the runtime's other tasks.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// A database file removed when dropped, with any `-wal`, `-shm` or
/// `-journal` SQLite made beside it: the snapshot is removed whether the
/// archive was written or not.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = self.0.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
    }
}

/// Writes a consistent copy of the SQLite database `db` to `out` (which
/// must not exist) with `VACUUM INTO`. It runs in one read transaction, so
/// a transaction a writer commits meanwhile is either wholly in the copy or
/// not at all, and commits still in the `-wal` file are included.
fn snapshot_sqlite(db: &Path, out: &Path) -> Result<(), BackupError> {
    let fail = |reason: String| BackupError::Snapshot {
        db: db.to_path_buf(),
        reason,
    };
    // SQLite takes the output name as text; a lossy name would write elsewhere.
    let target = out
        .to_str()
        .ok_or_else(|| fail(format!("`{}` is not a UTF-8 path", out.display())))?;
    // Read-only: a backup never changes the source. SQLite lifts read-only
    // for the output database of VACUUM INTO only.
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(e.to_string()))?;
    // A server's commit holds the lock briefly: wait for it rather than fail.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| fail(e.to_string()))?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Writes the tar.gz of `files` (each a file on disk and its path inside
/// `chroma/`) with its manifest to `tmp`; the bytes archived.
fn write_archive(files: &[(PathBuf, PathBuf)], tmp: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::create(tmp)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut manifest = String::new();
    let mut bytes = 0u64;
    for (on_disk, rel) in files {
        // Read each file once: hashed on its way into the archive.
        let input = std::fs::File::open(on_disk)?;
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
                on_disk.display()
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
/// Blocking (gzip, SHA-256, SQLite): from async code, call [`take`].
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

    let mut files: Vec<(PathBuf, PathBuf)> = files_under(source_dir)
        .map_err(wrap)?
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(source_dir)
                .expect("under the root")
                .to_path_buf();
            (f, rel)
        })
        .collect();
    // Held until the archive is written; dropping it removes the snapshot,
    // on every path out of this function.
    let mut snapshot = None;
    let db = source_dir.join(SQLITE);
    if db.is_file() {
        let snap = TempFile(dir.join(format!(".{name}.sqlite3.partial")));
        // VACUUM INTO refuses an existing non-empty file; a stale one is ours.
        let _ = std::fs::remove_file(&snap.0);
        snapshot_sqlite(&db, &snap.0)?;
        files.retain(|(_, rel)| {
            !SQLITE_SIDE_FILES
                .iter()
                .any(|s| rel.as_path() == Path::new(s))
        });
        for (on_disk, rel) in &mut files {
            if rel.as_path() == Path::new(SQLITE) {
                *on_disk = snap.0.clone();
            }
        }
        snapshot = Some(snap);
    }
    let bytes = match write_archive(&files, &tmp) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(wrap(e));
        }
    };
    drop(snapshot);
    if let Err(e) = std::fs::rename(&tmp, &archive) {
        let _ = std::fs::remove_file(&tmp);
        return Err(wrap(e));
    }

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
/// only the newest `keep`. A collection whose export does not end cleanly
/// with as many records as the source counted fails the backup, and the
/// partial directory is removed.
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
    let written = async {
        let mut manifest = String::new();
        let mut bytes = 0;
        for c in collections {
            let file = format!("{c}.jsonl.gz");
            let path = tmp.join(&file);
            let r = crate::export::export_collection(source, c, &path, 1000, &mut |_| {}).await?;
            bytes += r.bytes;
            let hash = blocking(move || restore::sha256_file(&path))
                .await
                .map_err(wrap)?;
            manifest.push_str(&format!("{hash}  {file}\n"));
        }
        std::fs::write(tmp.join(MANIFEST), manifest).map_err(wrap)?;
        std::fs::rename(&tmp, &out).map_err(wrap)?;
        Ok::<u64, BackupError>(bytes)
    }
    .await;
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let (d, s) = (dir.to_path_buf(), stem.to_string());
    let pruned = blocking(move || prune(&d, &s, keep)).await.map_err(wrap)?;
    Ok(BackupResult {
        archive: out,
        files: collections.len(),
        bytes,
        pruned,
    })
}

/// Takes the backup a plan asks for before its first copy, by the kind of
/// its source: a Chroma directory is archived (on a blocking thread); a
/// Chroma server, which has no directory to archive, has `collections`
/// (the planned source collections) exported as JSON Lines through
/// `source`. A JSON Lines source gets none (`None`): it is itself files on
/// disk that lanceferry only reads, so a copy would back up nothing an
/// apply could change.
pub async fn take(
    plan_source: &crate::plan::Source,
    source: &dyn crate::source::Source,
    collections: &[String],
    spec: &crate::plan::Backup,
) -> Result<Option<BackupResult>, BackupError> {
    match plan_source {
        crate::plan::Source::ChromaDir { path, .. } => {
            let (path, dir, keep) = (path.clone(), spec.dir.clone(), spec.keep);
            tokio::task::spawn_blocking(move || create(&path, &dir, keep))
                .await
                .expect("backup thread panicked")
                .map(Some)
        }
        crate::plan::Source::ChromaHttp { url, .. } => {
            // Several tables may read one collection: export it once.
            let mut names = collections.to_vec();
            names.sort();
            names.dedup();
            create_jsonl(source, &names, &url_stem(url), &spec.dir, spec.keep)
                .await
                .map(Some)
        }
        crate::plan::Source::Jsonl { .. } => Ok(None),
    }
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
    use std::collections::BTreeMap;

    /// A real SQLite database with one row, as Chroma's would be.
    fn sqlite_with(path: &Path, value: &str) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE t(x TEXT)").unwrap();
        conn.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
        conn
    }

    /// Every entry of an archive: name → bytes.
    fn entries_of(archive: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(archive).unwrap(),
        ));
        let mut out = BTreeMap::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    #[test]
    fn archives_with_manifest_and_prunes() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("seg")).unwrap();
        drop(sqlite_with(&src.path().join("chroma.sqlite3"), "db"));
        std::fs::write(src.path().join("seg/header.bin"), b"hdr").unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut last = None;
        for _ in 0..3 {
            let r = create(src.path(), out.path(), 2).unwrap();
            assert_eq!(r.files, 2);
            last = Some(r.archive);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Also proves the database snapshot is removed after each backup.
        let archives: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert_eq!(archives.len(), 2, "keep: 2");
        let entries = entries_of(&last.unwrap());
        assert!(entries.contains_key("chroma/seg/header.bin"), "{entries:?}");
        let manifest = String::from_utf8(entries["MANIFEST.sha256"].clone()).unwrap();
        for (name, rel) in [
            ("chroma/chroma.sqlite3", "chroma.sqlite3"),
            ("chroma/seg/header.bin", "seg/header.bin"),
        ] {
            let sha = hex::encode(Sha256::digest(&entries[name]));
            assert!(manifest.contains(&format!("{sha}  {rel}\n")), "{manifest}");
        }
    }

    #[test]
    fn a_live_database_is_archived_as_a_snapshot_that_holds_its_wal() {
        let src = tempfile::tempdir().unwrap();
        let db = src.path().join("chroma.sqlite3");
        let writer = rusqlite::Connection::open(&db).unwrap();
        let mode: String = writer
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // Keep every commit in the -wal file, as a busy server would.
        writer
            .execute_batch(
                "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('live');",
            )
            .unwrap();
        let wal = src.path().join("chroma.sqlite3-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "the row is in the WAL"
        );

        let out = tempfile::tempdir().unwrap();
        let r = create(src.path(), out.path(), 5).unwrap();
        let entries = entries_of(&r.archive);
        let names: Vec<&String> = entries.keys().collect();
        assert_eq!(
            names,
            ["MANIFEST.sha256", "chroma/chroma.sqlite3"],
            "no -wal or -shm: their content is in the snapshot"
        );
        let restored = out.path().join("restored.sqlite3");
        std::fs::write(&restored, &entries["chroma/chroma.sqlite3"]).unwrap();
        let got: String = rusqlite::Connection::open(&restored)
            .unwrap()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, "live");
        let left: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            // (The source is a `.tmp…` directory, so the archive's own name
            // starts with a dot too.)
            .filter(|n| n.ends_with(".partial") || n.contains("sqlite3"))
            .filter(|n| n != "restored.sqlite3")
            .collect();
        assert!(left.is_empty(), "snapshot left behind: {left:?}");
        drop(writer);
    }

    #[test]
    fn a_failed_snapshot_leaves_nothing_behind() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("chroma.sqlite3"), vec![b'x'; 4096]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = create(src.path(), out.path(), 5).unwrap_err().to_string();
        assert!(
            err.contains("chroma.sqlite3") && err.contains("hint:"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn backup_names_match_exactly() {
        let stamp = "20261126T031500.123Z";
        assert!(is_backup_of("chroma", &format!("chroma-{stamp}.tar.gz")));
        assert!(is_backup_of("chroma", &format!("chroma-{stamp}-jsonl")));
        assert!(is_backup_of(
            "chroma-2",
            &format!("chroma-2-{stamp}.tar.gz")
        ));
        for other in [
            format!("chroma-2-{stamp}.tar.gz"),
            format!("chroma-{stamp}.tar.gz.bak"),
            format!("chroma-{stamp}-extra.tar.gz"),
            format!("chroma-{stamp}.tar"),
            format!(".chroma-{stamp}.tar.gz.partial"),
            format!("chromadb-{stamp}.tar.gz"),
            "chroma-20261326T031500.123Z.tar.gz".to_string(),
            "chroma-20261126T031500.12Z.tar.gz".to_string(),
            "chroma-+2026112T031500.123Z.tar.gz".to_string(),
            "chroma-.tar.gz".to_string(),
        ] {
            assert!(!is_backup_of("chroma", &other), "{other}");
        }
    }

    #[test]
    fn pruning_keeps_the_backups_of_another_directory() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            // Oldest, and first in name order: the old prefix match took it.
            "chroma-2-20261126T031500.123Z.tar.gz",
            "chroma-20261127T031500.123Z.tar.gz",
            "chroma-20261128T031500.123Z-jsonl",
            "chroma-20261129T031500.123Z.tar.gz",
            "notes.txt",
        ];
        for n in names {
            if n.ends_with("-jsonl") {
                std::fs::create_dir(dir.path().join(n)).unwrap();
                std::fs::write(dir.path().join(n).join(MANIFEST), b"").unwrap();
            } else {
                std::fs::write(dir.path().join(n), b"x").unwrap();
            }
        }
        let pruned = prune(dir.path(), "chroma", 1).unwrap();
        let pruned: Vec<String> = pruned
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            pruned,
            [
                "chroma-20261127T031500.123Z.tar.gz",
                "chroma-20261128T031500.123Z-jsonl"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "chroma-2-20261126T031500.123Z.tar.gz",
                "chroma-20261129T031500.123Z.tar.gz",
                "notes.txt"
            ]
        );
    }

    #[tokio::test]
    async fn take_backs_up_each_kind_of_source_its_own_way() {
        use crate::export::fake::{FakeSource, NAME};
        use crate::plan::{Backup, DistanceSpace, Source, TokenHeader};
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSource {
            count: 3,
            batches: vec![2, 1],
            fail: false,
        };
        let spec = |name: &str| Backup {
            dir: tmp.path().join(name),
            keep: 5,
        };

        // A directory: an archive, taken on a blocking thread.
        let chroma = tmp.path().join("chroma_db");
        std::fs::create_dir(&chroma).unwrap();
        drop(sqlite_with(&chroma.join("chroma.sqlite3"), "db"));
        let dir_source = Source::ChromaDir {
            path: chroma.clone(),
            tenant: crate::plan::DEFAULT_TENANT.into(),
            database: crate::plan::DEFAULT_DATABASE.into(),
        };
        let r = take(&dir_source, &fake, &[], &spec("dir"))
            .await
            .unwrap()
            .expect("a directory is archived");
        assert!(r.archive.to_string_lossy().ends_with(".tar.gz"), "{r:?}");
        assert_eq!(verify(&r.archive).unwrap().files, 1);

        // A server: the planned collections exported, each once.
        let server = Source::ChromaHttp {
            url: "http://127.0.0.1:8000".into(),
            tenant: "default_tenant".into(),
            database: "default_database".into(),
            token: None,
            token_header: TokenHeader::XChromaToken,
            timeout_secs: 60,
            ca_cert: None,
        };
        let names = [NAME.to_string(), NAME.to_string()];
        let r = take(&server, &fake, &names, &spec("server"))
            .await
            .unwrap()
            .expect("a server is exported");
        let dir_name = r.archive.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            dir_name.starts_with("127.0.0.1-8000-") && dir_name.ends_with("-jsonl"),
            "{dir_name}"
        );
        assert_eq!(verify(&r.archive).unwrap().files, 1);

        // JSON Lines: nothing to back up, and nothing written.
        let jsonl = Source::Jsonl {
            path: tmp.path().join("exports"),
            space: DistanceSpace::L2,
        };
        assert!(
            take(&jsonl, &fake, &names, &spec("jsonl"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(!tmp.path().join("jsonl").exists());
    }

    #[tokio::test]
    async fn a_server_backup_with_a_short_export_leaves_no_directory() {
        use crate::export::fake::{FakeSource, NAME};
        let tmp = tempfile::tempdir().unwrap();
        // The count says 3, the stream ends after 2 without an error.
        let fake = FakeSource {
            count: 3,
            batches: vec![2],
            fail: false,
        };
        let err = create_jsonl(&fake, &[NAME.to_string()], "srv", tmp.path(), 5)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{NAME}`")), "{err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
