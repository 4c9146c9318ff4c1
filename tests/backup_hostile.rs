//! Hostile archives against `lanceferry backup restore`, made by hand (no
//! Python needed): a chain of symbolic links that leads out of the target,
//! absolute and `..` paths, links to `/etc` and out of the target, hard
//! links, a device, an entry that appears twice, a truncated archive and a
//! gzip bomb. Each must fail with exit 1, naming the entry or the problem,
//! and write nothing: not the victim outside, not the target, not even the
//! target's parent (restore makes it only after the first pass, which
//! writes nothing, has checked the whole archive), and a target that
//! existed stays exactly as it was.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An entry's content: bytes, or `n` zeros streamed (a bomb is never held
/// in memory).
enum Data {
    Bytes(Vec<u8>),
    Zeros(u64),
}

struct Entry {
    name: String,
    kind: tar::EntryType,
    data: Data,
    link: String,
}

fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        kind: tar::EntryType::Regular,
        data: Data::Bytes(data.to_vec()),
        link: String::new(),
    }
}

fn dir(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: tar::EntryType::Directory,
        data: Data::Bytes(Vec::new()),
        link: String::new(),
    }
}

/// A link, device or other entry without content.
fn special(name: &str, kind: tar::EntryType, link: &str) -> Entry {
    Entry {
        name: name.into(),
        kind,
        data: Data::Bytes(Vec::new()),
        link: link.into(),
    }
}

fn zeros(name: &str, n: u64) -> Entry {
    Entry {
        name: name.into(),
        kind: tar::EntryType::Regular,
        data: Data::Zeros(n),
        link: String::new(),
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The correct manifest for the regular files with bytes under `chroma/`
/// (each name once).
fn manifest_of(entries: &[Entry]) -> String {
    let mut lines = BTreeMap::new();
    for e in entries {
        if let (tar::EntryType::Regular, Data::Bytes(d), Some(rel)) =
            (e.kind, &e.data, e.name.strip_prefix("chroma/"))
        {
            lines.insert(rel.to_string(), sha(d));
        }
    }
    lines
        .iter()
        .map(|(name, hash)| format!("{hash}  {name}\n"))
        .collect()
}

/// Appends `e`, its name and link name copied byte for byte into an
/// old-style header: the tar crate's setters would refuse hostile ones.
fn append<W: Write>(b: &mut tar::Builder<W>, e: &Entry) {
    assert!(e.name.len() <= 100 && e.link.len() <= 100, "{}", e.name);
    let mut h = tar::Header::new_old();
    let old = h.as_old_mut();
    old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
    old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
    h.set_entry_type(e.kind);
    h.set_mode(0o644);
    match &e.data {
        Data::Bytes(d) => {
            h.set_size(d.len() as u64);
            h.set_cksum();
            b.append(&h, &d[..]).unwrap();
        }
        Data::Zeros(n) => {
            h.set_size(*n);
            h.set_cksum();
            b.append(&h, std::io::repeat(0).take(*n)).unwrap();
        }
    }
}

/// Writes a `.tar.gz` of `entries` followed by `MANIFEST.sha256` holding
/// `manifest`.
fn build(path: &Path, entries: &[Entry], manifest: &str) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    for e in entries {
        append(&mut b, e);
    }
    append(&mut b, &file("MANIFEST.sha256", manifest.as_bytes()));
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// Every path under `root` with what it is (a file's size, `dir`, or a
/// link's target), links not followed.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link to {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!("{} bytes", m.len())
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

/// A scratch directory laid out for one hostile archive:
/// `case.tar.gz`, an existing target `work/to` holding `precious.txt`, an
/// empty directory `elsewhere/`, and no `fresh/` (the parent of the other
/// target) and no `victim`.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("work/to")).unwrap();
        std::fs::write(tmp.path().join("work/to/precious.txt"), b"keep me").unwrap();
        std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
        Scene { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn archive(&self) -> PathBuf {
        self.path("case.tar.gz")
    }

    /// Restores the archive into a target whose parent does not exist and,
    /// with `force_too`, with --force over the existing `work/to`; each
    /// must exit 1 with every one of `expect` and a hint in its message,
    /// and leave the whole scratch directory exactly as it was.
    fn assert_refused(&self, expect: &[&str], force_too: bool) {
        let before = tree(self.tmp.path());
        let mut runs = vec![(self.path("fresh/to"), false)];
        if force_too {
            runs.push((self.path("work/to"), true));
        }
        for (to, force) in runs {
            let mut cmd = common::lanceferry();
            cmd.args(["backup", "restore"]);
            if force {
                cmd.arg("--force");
            }
            let o = cmd
                .arg(self.archive())
                .arg("--to")
                .arg(&to)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{}: {err}", to.display());
            for e in expect {
                assert!(err.contains(e), "{}: wanted {e:?} in: {err}", to.display());
            }
            assert!(err.contains("\nhint: "), "{err}");
            assert!(!self.path("victim").exists(), "a file was written outside");
            assert!(
                !self.path("fresh").exists(),
                "the target's parent was made before the archive was checked"
            );
            assert_eq!(
                std::fs::read(self.path("work/to/precious.txt")).unwrap(),
                b"keep me"
            );
            assert_eq!(tree(self.tmp.path()), before, "{}", to.display());
        }
        // verify finds the same without writing.
        let o = common::lanceferry()
            .args(["backup", "verify"])
            .arg(self.archive())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "verify passed a hostile archive");
    }
}

#[test]
fn a_hand_made_archive_restores() {
    // The control: the helper's archives are accepted when nothing in them
    // is hostile, so the refusals below are for the entries they name.
    let s = Scene::new();
    let entries = [
        dir("chroma/"),
        file("chroma/a", b"alpha"),
        dir("chroma/seg"),
        file("chroma/seg/b", b"beta"),
    ];
    build(&s.archive(), &entries, &manifest_of(&entries));
    let to = s.path("fresh/to");
    let o = common::lanceferry()
        .args(["backup", "restore"])
        .arg(s.archive())
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(to.join("a")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(to.join("seg/b")).unwrap(), b"beta");
    let leftovers: Vec<_> = std::fs::read_dir(s.path("fresh"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_chain_of_links_cannot_write_outside_the_target() {
    // Each link alone stays inside, textually; followed in turn, `y` is
    // `<staging>/../../victim`, and the old restore wrote the file there.
    let s = Scene::new();
    let entries = [
        dir("chroma/x"),
        special("chroma/x/up", tar::EntryType::Symlink, ".."),
        special("chroma/y", tar::EntryType::Symlink, "x/up/../../victim"),
        file("chroma/y", b"pwned"),
    ];
    build(&s.archive(), &entries, &manifest_of(&entries));
    s.assert_refused(&["`chroma/x/up`", "symbolic link"], true);
}

#[test]
fn an_absolute_path_is_refused() {
    let s = Scene::new();
    let victim = s.path("victim").display().to_string();
    let entries = [file(&victim, b"pwned")];
    build(&s.archive(), &entries, "");
    s.assert_refused(&[format!("`{victim}`").as_str(), "absolute path"], true);
}

#[test]
fn a_dotdot_path_is_refused() {
    let s = Scene::new();
    let entries = [file("chroma/../../victim", b"pwned")];
    build(&s.archive(), &entries, "");
    s.assert_refused(&["`chroma/../../victim`", "contains `..`"], true);
}

#[test]
fn a_symlink_to_etc_is_refused() {
    let s = Scene::new();
    let entries = [special("chroma/etc", tar::EntryType::Symlink, "/etc")];
    build(&s.archive(), &entries, "");
    s.assert_refused(&["`chroma/etc`", "symbolic link (to `/etc`)"], true);
}

#[test]
fn a_symlink_out_with_a_file_behind_it_is_refused() {
    let s = Scene::new();
    let out = s.path("elsewhere").display().to_string();
    let entries = [
        special("chroma/out", tar::EntryType::Symlink, &out),
        file("chroma/out/x", b"pwned"),
    ];
    build(&s.archive(), &entries, &manifest_of(&entries));
    s.assert_refused(&["`chroma/out`", "symbolic link"], true);
    assert!(!s.path("elsewhere/x").exists());
}

#[test]
fn a_hard_link_is_refused_even_to_a_file_inside() {
    let s = Scene::new();
    let entries = [
        file("chroma/a", b"alpha"),
        special("chroma/h", tar::EntryType::Link, "chroma/a"),
    ];
    build(&s.archive(), &entries, &manifest_of(&entries));
    s.assert_refused(&["`chroma/h`", "hard link (to `chroma/a`)"], true);
}

#[test]
fn a_character_device_is_refused() {
    let s = Scene::new();
    let entries = [special("chroma/tty", tar::EntryType::Char, "")];
    build(&s.archive(), &entries, "");
    s.assert_refused(&["`chroma/tty`", "character device"], true);
}

#[test]
fn an_entry_that_appears_twice_is_refused() {
    for second in ["chroma/a", "chroma/./a"] {
        let s = Scene::new();
        // Same bytes, so the manifest alone could not tell.
        let entries = [file("chroma/a", b"alpha"), file(second, b"alpha")];
        build(&s.archive(), &entries, &manifest_of(&entries[..1]));
        s.assert_refused(&[format!("`{second}`").as_str(), "appears twice"], true);
    }
}

/// Incompressible bytes, so an archive of them can be cut mid-stream.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_truncated_archive_fails_before_anything_is_written() {
    let s = Scene::new();
    // A real backup, by the library, of a directory with a real database.
    let src = s.tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    rusqlite::Connection::open(src.join("chroma.sqlite3"))
        .unwrap()
        .execute_batch("CREATE TABLE t(x BLOB)")
        .unwrap();
    std::fs::write(src.join("data_level0.bin"), noise(512 << 10)).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let whole = lanceferry::backup::create(&src, backups.path(), 5)
        .unwrap()
        .archive;
    std::fs::remove_dir_all(&src).unwrap();
    let o = common::lanceferry()
        .args(["backup", "verify"])
        .arg(&whole)
        .output()
        .unwrap();
    assert!(o.status.success(), "the whole backup is good");

    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(s.archive(), &bytes[..bytes.len() / 2]).unwrap();
    s.assert_refused(&["cannot read backup"], true);
}

#[test]
fn a_gzip_bomb_costs_no_disk() {
    const BOMB: u64 = 200 << 20;
    let s = Scene::new();
    let entries = [file("chroma/a", b"alpha"), zeros("chroma/bomb", BOMB)];
    // The manifest lists the bomb, with another file's hash.
    let manifest = format!("{}{}  bomb\n", manifest_of(&entries), sha(b"tiny"));
    build(&s.archive(), &entries, &manifest);
    let packed = std::fs::metadata(s.archive()).unwrap().len();
    assert!(packed < BOMB / 100, "{packed} bytes: not a bomb");

    // One run: each reads the 200 MB through, which costs seconds in a
    // debug build; the existing-target run is covered by the other cases.
    s.assert_refused(&["`bomb` has a different SHA-256"], false);
    // Nothing bigger than a few KB beside the archive, ever: the target's
    // parent was never made (assert_refused), so no staging directory was.
    for (p, what) in tree(s.tmp.path()) {
        if p.as_path() != Path::new("case.tar.gz") && what.ends_with(" bytes") {
            let n: u64 = what.trim_end_matches(" bytes").parse().unwrap();
            assert!(n < 4096, "{} is {n} bytes", p.display());
        }
    }
}
