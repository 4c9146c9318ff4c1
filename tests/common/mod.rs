//! Shared test helpers: real Chroma fixtures, made with the real chromadb.
//!
//! `fixture("1.5.9")` returns a directory holding `chroma/` (a persistent
//! directory written by that chromadb version) and `truth.json` (what
//! `collection.get()` returned). Fixtures are generated once by
//! `scripts/chroma_fixtures.py` in the version's venv and cached under
//! `$LANCEFERRY_FIXTURES` (default `~/.cache/lanceferry-fixtures`), keyed by
//! the script's SHA-256 so a changed script regenerates them. A missing venv
//! is created by `scripts/setup-python.sh`; if that fails, the test fails.
//!
//! Tests run in many threads and, under nextest or several `cargo test`
//! binaries, in many processes at once, all starting from empty caches on a
//! fresh machine. Every creation therefore happens under an advisory file
//! lock in its cache root (`flock` in the script, `File::lock` here), is
//! built in a temporary directory and renamed into place only when complete,
//! so a directory under its final name is always whole.

#![allow(dead_code)]

pub mod s3;
pub mod server;
pub mod truth;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `lanceferry` binary as a command, without color.
pub fn lanceferry() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("lanceferry").unwrap();
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `lanceferry ARGS` and returns what it did.
pub fn run(args: &[&str]) -> std::process::Output {
    lanceferry().args(args).output().unwrap()
}

/// A command's stdout then stderr, as text (for messages and `contains`).
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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

/// Holds an exclusive advisory lock on `ROOT/.lock` (created with its root)
/// until dropped; it serialises fixture creation across threads and
/// processes. The OS releases it if the process dies.
struct CacheLock(std::fs::File);

impl CacheLock {
    fn take(root: &Path) -> CacheLock {
        std::fs::create_dir_all(root).unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))
            .unwrap();
        file.lock().expect("lock the fixture cache");
        CacheLock(file)
    }
}

/// Builds `dir` by running `make` on a fresh temporary directory beside it,
/// marking it `.ready` and renaming it into place, all under the cache lock.
/// A `dir` without the marker (left by an older helper or a killed run) is
/// removed and rebuilt.
fn build_once(root: &Path, dir: &Path, make: impl FnOnce(&Path)) {
    if dir.join(".ready").exists() {
        return;
    }
    let _lock = CacheLock::take(root);
    if dir.join(".ready").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    make(&tmp);
    std::fs::write(tmp.join(".ready"), b"").unwrap();
    std::fs::rename(&tmp, dir).unwrap();
}

/// The venv for a chromadb version, created if absent.
pub fn venv(version: &str) -> PathBuf {
    venv_named(&format!("chroma-{version}"))
}

/// A venv of `scripts/setup-python.sh` by name (`chroma-1.5.9`, `moto`),
/// created if absent; a test that needs it fails if it cannot be made.
pub fn venv_named(name: &str) -> PathBuf {
    let root = home_cache("LANCEFERRY_VENVS", "lanceferry-venvs");
    let dir = root.join(name);
    if !dir.join(".ready").exists() {
        let status = Command::new("bash")
            .arg(repo().join("scripts/setup-python.sh"))
            .arg(name)
            .status()
            .expect("run scripts/setup-python.sh");
        assert!(
            status.success(),
            "scripts/setup-python.sh {name} failed: the tests need it (real chromadb, or moto's S3 endpoint)"
        );
    }
    assert!(
        dir.join(".ready").exists(),
        "no venv `{name}` at {}",
        dir.display()
    );
    dir
}

pub fn python(version: &str) -> PathBuf {
    venv(version).join("bin/python")
}

/// A stable digest of the fixture generator (SHA-256, not `DefaultHasher`,
/// whose output may change between Rust releases and orphan every cache).
fn script_hash() -> String {
    use sha2::Digest;
    let text = std::fs::read(repo().join("scripts/chroma_fixtures.py")).unwrap();
    hex::encode(&sha2::Sha256::digest(&text)[..8])
}

/// A generated fixture directory for a chromadb version.
pub fn fixture(version: &str) -> PathBuf {
    let root = home_cache("LANCEFERRY_FIXTURES", "lanceferry-fixtures");
    let dir = root.join(format!("{version}-{}", script_hash()));
    build_once(&root, &dir, |tmp| {
        let out = Command::new(python(version))
            .arg(repo().join("scripts/chroma_fixtures.py"))
            .arg(tmp)
            .output()
            .expect("run the fixture generator");
        assert!(
            out.status.success(),
            "fixture generator failed for chromadb {version}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
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
    let root = home_cache("LANCEFERRY_FIXTURES", "lanceferry-fixtures");
    let dir = root.join(format!("large-{count}x{dim}"));
    build_once(&root, &dir, |tmp| {
        let out = Command::new(python("1.5.9"))
            .arg(repo().join("scripts/make_large.py"))
            .arg(tmp)
            .arg(count.to_string())
            .arg(dim.to_string())
            .output()
            .expect("run make_large.py");
        assert!(
            out.status.success(),
            "make_large.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    dir
}
