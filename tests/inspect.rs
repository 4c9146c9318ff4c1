//! `lanceferry inspect` on real Chroma directories.

mod common;

use assert_cmd::Command;

#[test]
fn inspect_demo_directory_text() {
    let o = Command::cargo_bin("lanceferry")
        .unwrap()
        .current_dir(common::repo())
        .args(["inspect", "--path", "demo/chroma_db"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    insta::assert_snapshot!(String::from_utf8(o.stdout).unwrap());
}

#[test]
fn inspect_json_counts_types_per_key() {
    let fx = common::fixture("1.5.9");
    let o = Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["inspect", "--json", "--path"])
        .arg(fx.join("chroma"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cols = v["collections"].as_array().unwrap();
    let basic = cols.iter().find(|c| c["name"] == "basic").unwrap();
    assert_eq!(basic["count"], 300);
    assert_eq!(basic["dimension"], 8);
    assert_eq!(basic["space"], "l2");
    // 300 records, every 13th without metadata: 276 carry `page`, all ints.
    assert_eq!(basic["metadata_keys"]["page"]["types"]["int"], 276);
    let lists = cols.iter().find(|c| c["name"] == "lists").unwrap();
    assert_eq!(lists["metadata_keys"]["tags"]["types"]["list<string>"], 40);
    let missing = Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["inspect", "--collection", "nope", "--path"])
        .arg(fx.join("chroma"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("`basic`"));
}
