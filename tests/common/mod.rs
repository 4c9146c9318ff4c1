//! Shared test helpers: real Chroma fixtures, made with the real chromadb.
//!
//! `fixture("1.5.9")` returns a directory holding `chroma/` (a persistent
//! directory written by that chromadb version) and `truth.json` (what
//! `collection.get()` returned). Fixtures are generated once by
//! `scripts/chroma_fixtures.py` in the version's venv and cached under
//! `$LANCEFERRY_FIXTURES` (default `~/.cache/lanceferry-fixtures`), keyed by
//! the script's hash so a changed script regenerates them. A missing venv is
//! created by `scripts/setup-python.sh`; if that fails, the test fails.

#![allow(dead_code)]

pub mod server;
pub mod truth;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn home_cache(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache")
            .join(default)
    })
}

/// The venv for a chromadb version, created if absent.
pub fn venv(version: &str) -> PathBuf {
    let root = home_cache("LANCEFERRY_VENVS", "lanceferry-venvs");
    let dir = root.join(format!("chroma-{version}"));
    if !dir.join(".ready").exists() {
        let status = Command::new("bash")
            .arg(repo().join("scripts/setup-python.sh"))
            .status()
            .expect("run scripts/setup-python.sh");
        assert!(
            status.success(),
            "scripts/setup-python.sh failed: the tests need real chromadb"
        );
    }
    assert!(
        dir.join(".ready").exists(),
        "no venv for chromadb {version} at {}",
        dir.display()
    );
    dir
}

pub fn python(version: &str) -> PathBuf {
    venv(version).join("bin/python")
}

fn script_hash() -> String {
    use std::hash::{Hash, Hasher};
    let text = std::fs::read(repo().join("scripts/chroma_fixtures.py")).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A generated fixture directory for a chromadb version.
pub fn fixture(version: &str) -> PathBuf {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = home_cache("LANCEFERRY_FIXTURES", "lanceferry-fixtures");
    let dir = root.join(format!("{version}-{}", script_hash()));
    if dir.join("truth.json").exists() {
        return dir;
    }
    std::fs::create_dir_all(&root).unwrap();
    let tmp = root.join(format!(".tmp-{version}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new(python(version))
        .arg(repo().join("scripts/chroma_fixtures.py"))
        .arg(&tmp)
        .output()
        .expect("run the fixture generator");
    assert!(
        out.status.success(),
        "fixture generator failed for chromadb {version}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another process may have won the race; either copy is the same data.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    dir
}

/// A private copy of a fixture's Chroma directory (for tests that start a
/// server on it, which may write).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

pub fn truth(fixture: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture.join("truth.json")).unwrap()).unwrap()
}

/// A large single-collection directory (`canvas_explanations`) written by
/// chromadb 1.5.9 with `scripts/make_large.py`, cached like the fixtures.
pub fn large_fixture(count: usize, dim: usize) -> PathBuf {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = home_cache("LANCEFERRY_FIXTURES", "lanceferry-fixtures");
    let dir = root.join(format!("large-{count}x{dim}"));
    if dir.join(".ready").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(python("1.5.9"))
        .arg(repo().join("scripts/make_large.py"))
        .arg(&dir)
        .arg(count.to_string())
        .arg(dim.to_string())
        .output()
        .expect("run make_large.py");
    assert!(
        out.status.success(),
        "make_large.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join(".ready"), b"").unwrap();
    dir
}
