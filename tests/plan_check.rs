//! The plan language as users meet it: `lanceferry check`, `graph` and
//! `schema` run as the real binary. Every malformed plan under
//! `tests/plans/invalid/` must fail with exit code 1 and a one-screen error
//! naming FILE:LINE:COLUMN with a `hint:`; the exact text is pinned by
//! snapshots so reviewers see what users will see.

use std::path::Path;

use assert_cmd::Command;

fn lanceferry() -> Command {
    let mut cmd = Command::cargo_bin("lanceferry").unwrap();
    cmd.env("NO_COLOR", "1")
        .env_remove("CHROMA_PATH")
        .env_remove("LANCEDB_URI")
        .env_remove("STATE_DIR")
        .env_remove("BACKUP_DIR")
        .env_remove("COLLECTION")
        .env_remove("CHROMA_TOKEN")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[test]
fn malformed_plans_fail_with_positioned_hints() {
    insta::glob!("plans/invalid/*.yaml", |path| {
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_path_buf();
        let output = lanceferry().arg("check").arg(&rel).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(1),
            "{} should fail with exit code 1 (not panic); stderr:\n{stderr}",
            rel.display()
        );
        assert!(output.stdout.is_empty(), "errors go to stderr only");
        let location = format!("{}:", rel.display());
        assert!(
            stderr.contains(&location),
            "{}: error must name the file with line and column:\n{stderr}",
            rel.display()
        );
        assert!(
            stderr.contains("\nhint: "),
            "every error ends with a hint:\n{stderr}"
        );
        assert!(
            stderr.lines().count() <= 24,
            "one screen at most:\n{stderr}"
        );
        insta::assert_snapshot!(stderr);
    });
}

#[test]
fn there_are_at_least_twenty_malformed_plans() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans/invalid");
    let count = std::fs::read_dir(dir).unwrap().count();
    assert!(count >= 20, "only {count} malformed plans");
}

#[test]
fn example_plans_check() {
    for plan in ["plans/canvas.yaml", "plans/minimal.yaml"] {
        let output = lanceferry().args(["check", plan]).output().unwrap();
        assert!(
            output.status.success(),
            "{plan}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.contains("is valid"), "{stdout}");
    }
}

#[test]
fn example_plans_carry_the_schema_modeline() {
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/plan.schema.json"),
            "{} lacks the schema modeline",
            path.display()
        );
    }
}

#[test]
fn canvas_check_summary() {
    let output = lanceferry()
        .args(["check", "plans/canvas.yaml"])
        .output()
        .unwrap();
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}

#[test]
fn canvas_graph_in_every_format() {
    for format in ["text", "dot", "mermaid"] {
        let output = lanceferry()
            .args(["graph", "plans/canvas.yaml", "--format", format])
            .output()
            .unwrap();
        assert!(output.status.success());
        insta::assert_snapshot!(
            format!("canvas_graph_{format}"),
            String::from_utf8(output.stdout).unwrap()
        );
    }
}

#[test]
fn minimal_graph() {
    let output = lanceferry()
        .args(["graph", "plans/minimal.yaml"])
        .output()
        .unwrap();
    assert!(output.status.success());
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}

#[test]
fn committed_schema_matches_the_code() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/plan.schema.json"),
    )
    .unwrap();
    let output = lanceferry().arg("schema").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        committed,
        "schemas/plan.schema.json is stale: run `cargo run -- schema > schemas/plan.schema.json`"
    );
}

#[test]
fn variables_from_flags_files_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("staging.env");
    std::fs::write(
        &vars,
        "# staging\nCHROMA_PATH=/from/file\nLANCEDB_URI='/file/lance'\n",
    )
    .unwrap();
    let output = lanceferry()
        .env("LANCEDB_URI", "/from/env")
        .args(["check", "plans/minimal.yaml", "--json", "--var-file"])
        .arg(&vars)
        .args(["--var", "COLLECTION=notes"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["plan"]["source"]["path"], "/from/file");
    // The var file beats the environment; --var beats both.
    assert_eq!(v["plan"]["target"]["uri"], "/file/lance");
    assert_eq!(v["plan"]["collections"][0]["source"], "notes");
}

#[test]
fn token_comes_only_from_a_variable_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("http.yaml");
    std::fs::write(
        &plan,
        "version: 1\nname: h\nsource:\n  chroma:\n    url: http://127.0.0.1:8000\n    token: ${CHROMA_TOKEN}\ntarget: { lancedb: { uri: ./out } }\ncollections:\n  - source: docs\n",
    )
    .unwrap();
    let secret = "very-secret-token-value";
    for args in [vec!["check"], vec!["check", "--json"], vec!["graph"]] {
        let output = lanceferry()
            .args(&args)
            .arg(&plan)
            .env("CHROMA_TOKEN", secret)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains(secret), "secret leaked by {args:?}: {all}");
    }
    // Undefined, it is an error naming the variable, not the value.
    let output = lanceferry().arg("check").arg(&plan).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`CHROMA_TOKEN` is not defined"));
}

#[test]
fn check_json_reports_errors_as_data() {
    let output = lanceferry()
        .args([
            "check",
            "--json",
            "tests/plans/invalid/two_vector_columns.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 10);
    assert!(
        v["errors"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("exactly one vector column")
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    lanceferry().arg("frobnicate").assert().code(1);
    lanceferry().arg("--help").assert().success();
    lanceferry()
        .args(["check", "no/such/plan.yaml"])
        .assert()
        .code(1)
        .stderr(
            predicates::str::contains("cannot read plan `no/such/plan.yaml`")
                .and(predicates::str::contains("hint:")),
        );
}

use predicates::prelude::PredicateBooleanExt;
