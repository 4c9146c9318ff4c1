//! Backups of a real Chroma directory (written by chromadb 1.5.9): verify,
//! restore, and the real chromadb client reading the restored directory;
//! restore's refusals; and crafted archives (absolute paths, `..`, any
//! link, tampered files) rejected without writing anything. More hostile
//! archives (link chains, devices, duplicates, truncation, a gzip bomb)
//! are in `backup_hostile.rs`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use lanceferry::backup::{self, BackupKind};

/// `lanceferry backup restore ARCHIVE --to TO [--force]`.
fn restore(archive: &Path, to: &Path, force: bool) -> std::process::Output {
    let mut cmd = common::lanceferry();
    cmd.args(["backup", "restore"]);
    if force {
        cmd.arg("--force");
    }
    cmd.arg(archive).arg("--to").arg(to).output().unwrap()
}

fn archive_of_fixture(dir: &Path) -> PathBuf {
    let fx = common::fixture("1.5.9");
    backup::create(&fx.join("chroma"), dir, 5).unwrap().archive
}

#[test]
fn backup_verify_restore_and_chromadb_reads_the_restored_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_of_fixture(&tmp.path().join("backups"));

    let o = common::lanceferry()
        .args(["backup", "list", "--json", "--dir"])
        .arg(tmp.path().join("backups"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["kind"], "archive");
    assert!(list[0]["taken"].as_str().is_some(), "{list}");

    let o = common::lanceferry()
        .args(["backup", "verify"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: "));

    let to = tmp.path().join("restored");
    let o = restore(&archive, &to, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The real chromadb opens it and returns the same records.
    let dump = Std::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/dump_chroma.py"))
        .arg(&to)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let truth = common::truth(&common::fixture("1.5.9"));
    for (name, t) in truth["collections"].as_object().unwrap() {
        let g = &got["collections"][name];
        for key in [
            "count",
            "ids",
            "documents",
            "uris",
            "metadatas",
            "embeddings",
        ] {
            assert_eq!(g[key], t[key], "restored `{name}`: {key}");
        }
    }
}

#[test]
fn restore_refuses_a_non_empty_target_and_force_moves_it_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive_of_fixture(&tmp.path().join("backups"));
    let to = tmp.path().join("chroma_db");
    std::fs::create_dir(&to).unwrap();
    std::fs::write(to.join("precious.txt"), b"keep me").unwrap();

    let o = restore(&archive, &to, false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(to.join("precious.txt")).unwrap(), b"keep me");

    let o = restore(&archive, &to, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(to.join("chroma.sqlite3").is_file());
    let aside: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("chroma_db.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("precious.txt")).unwrap(),
        b"keep me"
    );
}

/// One raw tar entry; the name and link name are written byte for byte
/// (the tar crate's safe setters would refuse them).
#[derive(Clone, Copy)]
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    link: &'a str,
}

fn crafted(path: &Path, entries: &[Raw], manifest_for: &[(&str, &[u8])]) {
    use sha2::{Digest, Sha256};
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    let mut manifest = String::new();
    for (name, data) in manifest_for {
        manifest.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
    }
    let mut all: Vec<Raw> = entries.to_vec();
    all.push(Raw {
        name: "MANIFEST.sha256",
        kind: tar::EntryType::Regular,
        data: manifest.as_bytes(),
        link: "",
    });
    for e in &all {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: tar::EntryType::Regular,
        data,
        link: "",
    }
}

/// A crafted archive: name, entries, what its manifest lists, the error.
type Case<'a> = (&'a str, Vec<Raw<'a>>, Vec<(&'a str, &'a [u8])>, &'a str);

#[test]
fn crafted_archives_are_rejected_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let outside = t.join("outside.txt");
    let escape = format!("chroma/../../{}", "outside.txt");
    let abs = outside.display().to_string();
    let cases: Vec<Case> = vec![
        ("absolute", vec![file(&abs, b"x")], vec![], "absolute path"),
        ("dotdot", vec![file(&escape, b"x")], vec![], "contains `..`"),
        (
            "outside-root",
            vec![file("other/x", b"x")],
            vec![],
            "outside `chroma/`",
        ),
        (
            "symlink-absolute",
            vec![Raw {
                name: "chroma/l",
                kind: tar::EntryType::Symlink,
                data: b"",
                link: "/etc/passwd",
            }],
            vec![],
            "symbolic link",
        ),
        (
            "symlink-escape",
            vec![Raw {
                name: "chroma/sub/l",
                kind: tar::EntryType::Symlink,
                data: b"",
                link: "../../../outside.txt",
            }],
            vec![],
            "symbolic link",
        ),
        (
            "write-through-link",
            vec![
                Raw {
                    name: "chroma/d",
                    kind: tar::EntryType::Symlink,
                    data: b"",
                    link: ".",
                },
                file("chroma/d/x", b"x"),
            ],
            vec![],
            "symbolic link",
        ),
        (
            "hardlink-escape",
            vec![Raw {
                name: "chroma/h",
                kind: tar::EntryType::Link,
                data: b"",
                link: "../outside.txt",
            }],
            vec![],
            "hard link",
        ),
        (
            "tampered",
            vec![file("chroma/a", b"changed")],
            vec![("a", &b"original"[..])],
            "different SHA-256",
        ),
        (
            "unlisted",
            vec![file("chroma/a", b"a"), file("chroma/b", b"b")],
            vec![("a", &b"a"[..])],
            "not in the manifest",
        ),
        (
            "missing",
            vec![file("chroma/a", b"a")],
            vec![("a", &b"a"[..]), ("gone", &b"g"[..])],
            "`gone` is missing",
        ),
    ];
    for (name, entries, manifest, expect) in cases {
        let archive = t.join(format!("{name}.tar.gz"));
        crafted(&archive, &entries, &manifest);
        let to = t.join(format!("restore-{name}"));
        let o = restore(&archive, &to, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(expect) && err.contains("hint:"),
            "{name}: {err}"
        );
        assert!(!to.exists(), "{name}: the target was created");
        assert!(!outside.exists(), "{name}: a file was written outside");
        let leftovers: Vec<String> = std::fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
        // verify says the same without writing.
        let o = common::lanceferry()
            .args(["backup", "verify"])
            .arg(&archive)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: verify passed a bad archive"
        );
    }
}

#[test]
fn a_json_lines_backup_lists_verifies_and_is_not_restored_as_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = common::fixture("1.5.9");
    let source = lanceferry::source::chroma_dir::ChromaDir::open(fx.join("chroma")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tmp.path().join("backups");
    let r = rt
        .block_on(backup::create_jsonl(
            &source,
            &["basic".into()],
            "srv",
            &dir,
            5,
        ))
        .unwrap();
    let entries = backup::list(&dir).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, BackupKind::Jsonl);
    assert_eq!(backup::verify(&r.archive).unwrap().files, 1);
    std::fs::write(r.archive.join("basic.jsonl.gz"), b"tampered").unwrap();
    let err = backup::verify(&r.archive).unwrap_err().to_string();
    assert!(err.contains("different SHA-256"), "{err}");
    let err = backup::restore(&r.archive, &tmp.path().join("x"), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("JSON Lines backup") && err.contains("jsonl:"),
        "{err}"
    );
}
