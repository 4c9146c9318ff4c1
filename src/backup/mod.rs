//! Backups of a Chroma persistent directory: a timestamped `.tar.gz` with a
//! manifest of every file's SHA-256, taken before any copy.
//!
//! The archive is written to a temporary name and renamed when complete, so
//! a backup that exists is whole. `keep: N` prunes the oldest archives of the
//! same directory afterwards. Listing, verifying and restoring archives are
//! the next part of this module.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let name = format!("{stem}-{stamp}.tar.gz");
    let archive = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));

    let files = files_under(source_dir).map_err(wrap)?;
    let file = std::fs::File::create(&tmp).map_err(wrap)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut manifest = String::new();
    let mut bytes = 0u64;
    for f in &files {
        let rel = f.strip_prefix(source_dir).expect("under the root");
        let mut hasher = Sha256::new();
        let mut input = std::fs::File::open(f).map_err(wrap)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(wrap)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        manifest.push_str(&format!(
            "{}  {}\n",
            hex::encode(hasher.finalize()),
            rel.display()
        ));
        tar.append_path_with_name(f, Path::new("chroma").join(rel))
            .map_err(wrap)?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "MANIFEST.sha256", manifest.as_bytes())
        .map_err(wrap)?;
    let gz = tar.into_inner().map_err(wrap)?;
    let mut file = gz.finish().map_err(wrap)?;
    file.flush().map_err(wrap)?;
    file.sync_all().map_err(wrap)?;
    std::fs::rename(&tmp, &archive).map_err(wrap)?;

    // Prune: archive names sort by time within one source directory.
    let prefix = format!("{stem}-");
    let mut existing: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(wrap)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tar.gz"))
        })
        .collect();
    existing.sort();
    let mut pruned = Vec::new();
    while existing.len() > keep as usize {
        let old = existing.remove(0);
        std::fs::remove_file(&old).map_err(wrap)?;
        pruned.push(old);
    }
    Ok(BackupResult {
        archive,
        files: files.len(),
        bytes,
        pruned,
    })
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
