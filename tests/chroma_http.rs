//! The HTTP reader against real `chroma run` servers (1.5.9 and 0.6.3 on the
//! v2 API, 0.4.24 on v1), each serving a copy of that version's fixture:
//! every record must equal what `collection.get()` returned. Also: a server
//! restarted in the middle of a read, a collection written during a read,
//! token auth with both headers, and the errors users meet (server down,
//! wrong token, unknown collection or database).

mod common;

use std::time::Duration;

use common::server::ChromaServer;
use futures::StreamExt;
use lanceferry::plan::{Secret, TokenHeader};
use lanceferry::source::chroma_http::{ChromaHttp, HttpOptions};
use lanceferry::source::{Source, SourceError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn client(url: &str) -> ChromaHttp {
    ChromaHttp::new(HttpOptions::new(url)).unwrap()
}

fn compare_over_http(version: &str, api: &str) {
    let server = ChromaServer::start(version);
    let truth = common::truth(&common::fixture(version));
    let source = client(&server.url());
    rt().block_on(async {
        common::truth::assert_source_matches(
            &source,
            &truth,
            &format!("chromadb {version} over HTTP"),
        )
        .await;
        assert_eq!(source.api_generation().await.unwrap(), api);
    });
}

#[test]
fn reads_chroma_1_5_9_over_http_exactly() {
    compare_over_http("1.5.9", "v2");
}

#[test]
fn reads_chroma_0_6_3_over_http_exactly() {
    compare_over_http("0.6.3", "v2");
}

#[test]
fn reads_chroma_0_4_24_over_http_exactly() {
    compare_over_http("0.4.24", "v1");
}

#[test]
fn a_server_restarted_in_the_middle_of_a_read_is_survived() {
    let mut server = ChromaServer::start("1.5.9");
    let truth = common::truth(&common::fixture("1.5.9"));
    let source = client(&server.url());
    rt().block_on(async {
        let mut stream = source.read("basic", 20);
        let first = stream.next().await.unwrap().unwrap();
        // Kill it with pages still to read; bring it back a little later,
        // while the reader is retrying.
        server.kill();
        let restarted = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            server.restart();
            server
        });
        let mut all = first;
        while let Some(b) = stream.next().await {
            let b = b.unwrap_or_else(|e| panic!("the read did not survive the restart: {e}"));
            all.append(b);
        }
        let server = restarted.join().unwrap();
        common::truth::assert_batch_matches(
            &all,
            &truth["collections"]["basic"],
            "basic across a restart",
        );
        drop(server);
    });
}

#[test]
fn a_collection_written_during_the_read_is_reported() {
    let server = ChromaServer::start("1.5.9");
    let source = client(&server.url());
    let err = rt().block_on(async {
        let mut stream = source.read("basic", 50);
        stream.next().await.unwrap().unwrap();
        let out = std::process::Command::new(common::python("1.5.9"))
            .arg("-c")
            .arg(format!(
                "import chromadb; c = chromadb.HttpClient(host='127.0.0.1', port={}); \
                 c.get_collection('basic').add(ids=['late-1', 'late-2'], embeddings=[[0.5]*8, [0.25]*8])",
                server.port
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last = None;
        while let Some(b) = stream.next().await {
            if let Err(e) = b {
                last = Some(e);
            }
        }
        last.expect("a write during the read must be reported")
    });
    let text = err.to_string();
    assert!(
        matches!(
            err,
            SourceError::ChangedDuringRead {
                before: 300,
                after: 302,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("changed while it was read") && text.contains("hint:"),
        "{text}"
    );
}

#[test]
fn token_auth_with_either_header() {
    let fx = common::fixture("0.6.3").join("chroma");
    for (transport, header, other) in [
        (
            "Authorization",
            TokenHeader::Authorization,
            TokenHeader::XChromaToken,
        ),
        (
            "X-Chroma-Token",
            TokenHeader::XChromaToken,
            TokenHeader::Authorization,
        ),
    ] {
        let server = ChromaServer::start_with(
            "0.6.3",
            &fx,
            &[
                (
                    "CHROMA_SERVER_AUTHN_PROVIDER",
                    "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
                ),
                ("CHROMA_SERVER_AUTHN_CREDENTIALS", "s3cret-token"),
                ("CHROMA_AUTH_TOKEN_TRANSPORT_HEADER", transport),
            ],
        );
        let with = |token: Option<&str>, header: TokenHeader| {
            let mut o = HttpOptions::new(server.url());
            o.token = token.map(|t| Secret::new(t.into(), "CHROMA_TOKEN".into()));
            o.token_header = header;
            ChromaHttp::new(o).unwrap()
        };
        rt().block_on(async {
            let names: Vec<String> = with(Some("s3cret-token"), header)
                .list_collections()
                .await
                .unwrap_or_else(|e| panic!("{transport}: the right token was refused: {e}"))
                .into_iter()
                .map(|c| c.name)
                .collect();
            assert!(names.contains(&"basic".to_string()), "{names:?}");
            for (token, h) in [
                (Some("wrong"), header),
                (Some("s3cret-token"), other),
                (None, header),
            ] {
                let err = with(token, h).list_collections().await.unwrap_err();
                let text = err.to_string();
                assert!(
                    matches!(
                        err,
                        SourceError::Unauthorized {
                            status: 401 | 403,
                            ..
                        }
                    ),
                    "{transport}/{token:?}: {text}"
                );
                assert!(text.contains("hint:"), "{text}");
                assert!(!text.contains("s3cret-token"), "the token leaked: {text}");
                if token.is_some() {
                    assert!(text.contains("token_header"), "{text}");
                }
            }
        });
    }
}

#[test]
fn a_server_that_is_down_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = rt()
        .block_on(client(&format!("http://127.0.0.1:{port}")).list_collections())
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SourceError::Unreachable { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("hint: start the server"),
        "{text}"
    );
}

#[test]
fn unknown_collection_and_database_are_named() {
    for version in ["1.5.9", "0.4.24"] {
        let server = ChromaServer::start(version);
        rt().block_on(async {
            let err = client(&server.url()).collection("nope").await.unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, SourceError::NoSuchCollection { .. }),
                "{version}: {text}"
            );
            assert!(text.contains("`basic`") && text.contains("hint:"), "{text}");

            let mut o = HttpOptions::new(server.url());
            o.database = "no_such_db".into();
            let err = ChromaHttp::new(o)
                .unwrap()
                .list_collections()
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, SourceError::NoSuchDatabase { .. }),
                "{version}: {text}"
            );
            assert!(
                text.contains("`no_such_db`") && text.contains("hint:"),
                "{text}"
            );
        });
    }
}

#[test]
fn apply_and_verify_from_a_server() {
    let server = ChromaServer::start("1.5.9");
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            r#"version: 1
name: from-server
source:
  chroma:
    url: {url}
target:
  lancedb:
    uri: {out}/lancedb
state:
  path: {out}/state
backup:
  dir: {out}/backups
collections:
  - source: basic
    batch_size: 64
    columns:
      - {{ name: id, from: id }}
      - {{ name: vector, from: embedding }}
      - {{ name: text, from: document }}
      - {{ name: page, from: metadata.page, type: int64 }}
"#,
            url = server.url(),
            out = tmp.path().display()
        ),
    )
    .unwrap();
    let apply = assert_cmd::Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["apply", "--auto-approve"])
        .arg(&plan)
        .assert();
    let out = apply.get_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = assert_cmd::Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["verify", "--json"])
        .arg(&plan)
        .assert();
    let out = verify.get_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = &report[0]["ids"];
    assert_eq!(ids["source_count"], 300, "{report}");
    assert_eq!(ids["target_count"], 300, "{report}");
    assert_eq!(ids["breaches"], serde_json::json!([]), "{report}");

    // The backup of a server is a JSON Lines export that verifies and reads back.
    let backups = lanceferry::backup::list(&tmp.path().join("backups")).unwrap();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0].kind, lanceferry::backup::BackupKind::Jsonl);
    lanceferry::backup::verify(&backups[0].path).unwrap();
    let exported = lanceferry::source::jsonl::JsonlDir::open(
        &backups[0].path,
        lanceferry::plan::DistanceSpace::L2,
    )
    .unwrap();
    let back = rt().block_on(common::truth::read_all(&exported, "basic", 100));
    common::truth::assert_batch_matches(
        &back,
        &common::truth(&common::fixture("1.5.9"))["collections"]["basic"],
        "the JSON Lines backup of `basic`",
    );

    // inspect --url sees the same collection.
    let inspect = assert_cmd::Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["inspect", "--json", "--collection", "basic", "--url"])
        .arg(server.url())
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&inspect.get_output().stdout).unwrap();
    let c = &report["collections"][0];
    assert_eq!(c["name"], "basic");
    assert_eq!(c["count"], 300);
    assert_eq!(c["dimension"], 8);
}

/// A private CA and a certificate for 127.0.0.1 signed by it (openssl CLI).
fn private_ca(dir: &std::path::Path) {
    let sh = |args: &str| {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            o.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=lanceferry-test-ca",
    );
    sh("openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(
        "openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf",
    );
}

#[test]
fn https_with_a_private_ca() {
    let server = ChromaServer::start("1.5.9");
    let tmp = tempfile::tempdir().unwrap();
    private_ca(tmp.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut proxy = std::process::Command::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/tls_proxy.py"))
        .arg(server.url())
        .arg(port.to_string())
        .arg(tmp.path().join("leaf.pem"))
        .arg(tmp.path().join("leaf.key"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let url = format!("https://127.0.0.1:{port}");
    let result = rt().block_on(async {
        // Not trusted by default: a clear error, at once (never retried).
        let err = client(&url)
            .list_collections()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TLS handshake") && err.contains("ca_cert"),
            "{err}"
        );
        let mut o = HttpOptions::new(url.clone());
        o.ca_cert = Some(tmp.path().join("ca.pem"));
        let source = ChromaHttp::new(o).unwrap();
        let names: Vec<String> = source
            .list_collections()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        let batch = common::truth::read_all(&source, "basic", 100).await;
        (names, batch.len())
    });
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(result.0.contains(&"basic".to_string()), "{:?}", result.0);
    assert_eq!(result.1, 300);
}
