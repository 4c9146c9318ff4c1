//! `lanceferry mirror`: a Chroma application talks to the mirror as to
//! Chroma (the real chromadb `HttpClient`, `tests/mirror_client.py`), sees
//! exactly what Chroma answers, and LanceDB follows: `lanceferry verify`
//! (every value, vectors by cosine) passes once the journal is drained.
//! Also with LanceDB away for a while, with the mirror SIGKILLed in the
//! middle of a stream of writes, at two fixed instants of a write (after
//! its journal line; after the upstream's answer, before the journal's),
//! under four concurrent clients, and drained by `mirror --drain` without
//! serving. Servers are real `chroma run` (1.5.9); the mirror is the built
//! binary, stopped by PID. No sleep is an assertion: statistics are polled
//! against a deadline.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::server::ChromaServer;
use common::{run, text};
use serde_json::Value;

const CHROMA: &str = "1.5.9";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`: the status and body, or None if
/// nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn stats_of(port: u16) -> Option<Value> {
    match get(port, "/lanceferry/stats")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count in {v}"))
}

/// The plan: the upstream server's `basic` collection, `mode: sync`,
/// every value validated.
fn plan(d: &Path, upstream: &ChromaServer) -> PathBuf {
    let p = d.join("mirror.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: mirror\nsource: {{ chroma: {{ url: \"{}\" }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: basic\n    mode: sync\n",
            upstream.url(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn apply_ok(p: &Path) {
    let o = run(&["apply", p.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
}

fn verify(p: &Path) -> std::process::Output {
    run(&["verify", p.to_str().unwrap()])
}

fn verify_ok(p: &Path, mirror_log: &str) {
    let o = verify(p);
    assert!(
        o.status.success(),
        "{}\n--- mirror log ---\n{mirror_log}",
        text(&o)
    );
}

/// The Python client (chromadb's HttpClient) in one of its modes.
fn client(args: &[&str]) -> Command {
    let mut c = Command::new(common::python(CHROMA));
    c.arg(common::repo().join("tests/mirror_client.py"))
        .args(args)
        .env("ANONYMIZED_TELEMETRY", "False");
    c
}

fn client_ok(args: &[&str]) -> String {
    let o = client(args).output().unwrap();
    assert!(
        o.status.success(),
        "mirror_client.py {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A running `lanceferry mirror`, killed (SIGKILL, by PID) when dropped.
struct Mirror {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Mirror {
    fn start(plan: &Path, port: u16, log: &Path) -> Mirror {
        Self::start_with(plan, port, log, &[])
    }

    fn start_with(plan: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> Mirror {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
            .args([
                "mirror",
                plan.to_str().unwrap(),
                "--listen",
                listen.as_str(),
            ])
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut m = Mirror {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if stats_of(port).is_some() {
                return m;
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the mirror exited ({status}) before serving:\n{}", m.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the mirror did not serve within 60 s:\n{}", m.log());
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stats(&self) -> Value {
        stats_of(self.port).unwrap_or_else(|| panic!("no statistics:\n{}", self.log()))
    }

    /// Polls the statistics until `done` holds; fails after `within`.
    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(s) = stats_of(self.port) {
                if done(&s) {
                    return s;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the mirror did not reach `{what}` within {within:?}; last statistics:\n{last:#}\n--- log ---\n{}",
            self.log()
        );
    }

    /// Until the journal is empty.
    fn drained(&self) -> Value {
        self.wait_for("pending == 0", Duration::from_secs(120), |s| {
            n(s, "pending") == 0
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to end by itself (a failpoint).
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let status = self.child.as_mut().unwrap().try_wait().unwrap();
            if let Some(status) = status {
                self.child = None;
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the mirror did not end within {within:?}:\n{}", self.log());
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Segment files of every mirror journal under `dir`.
fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(journal_files(&p));
        } else if p.parent().is_some_and(|d| d.ends_with("journal"))
            && p.extension().is_some_and(|x| x == "jsonl")
        {
            out.push(p);
        }
    }
    out
}

/// The LanceDB table's version and rows.
fn version(d: &Path) -> (u64, u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = lanceferry::target::LanceTarget::connect(&lanceferry::plan::Target {
            uri: d.join("lancedb").display().to_string(),
            storage_options: Vec::new(),
        })
        .await
        .unwrap();
        let v = t.version("basic").await.unwrap().unwrap();
        (v.version, v.rows)
    })
}

/// 1. The whole API through the mirror: what the client reads is what
///    Chroma answers directly (a second copy of the same server, given the
///    same calls), and the table ends equal to the source.
#[test]
fn a_client_through_the_mirror_sees_chroma_and_lancedb_follows() {
    let upstream = ChromaServer::start(CHROMA);
    let twin = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    apply_ok(&p);
    let mirror = Mirror::start(&p, free_port(), &d.join("mirror.log"));

    let via_mirror = client_ok(&["full", &mirror.url()]);
    let direct = client_ok(&["full", &twin.url()]);
    assert_eq!(via_mirror, direct, "the mirror changed an answer");
    let read: Value = serde_json::from_str(&via_mirror).unwrap();
    assert!(read["get"]["doc-0001"]["metadata"]["label"] == "changed through the mirror");

    let s = mirror.drained();
    // add, upsert, 3 updates, 3 deletes (2 by filter): all journaled.
    assert_eq!(n(&s, "writes"), 8, "{s:#}");
    assert_eq!(n(&s, "journaled"), 8, "{s:#}");
    assert_eq!(n(&s, "upstream_ok"), 8, "{s:#}");
    assert_eq!(n(&s, "both_ok"), 8, "{s:#}");
    assert_eq!(n(&s, "dropped"), 0, "{s:#}");
    assert!(n(&s, "requests") > 8, "reads are proxied too: {s:#}");
    assert_eq!(s["success_rate"], 1.0, "{s:#}");
    verify_ok(&p, &mirror.log());

    // What `mirror status` prints comes from the running mirror.
    let ps = p.to_str().unwrap();
    let o = run(&["mirror", "status", ps]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("writes 8") && text(&o).contains("pending 0"),
        "{}",
        text(&o)
    );
    let o = run(&["mirror", "status", ps, "--json"]);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(n(&j, "writes"), 8, "{j}");
    let (status, metrics) = get(mirror.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("lanceferry_mirror_writes_total 8\n")
            && metrics.contains("lanceferry_mirror_pending 0\n"),
        "{metrics}"
    );
    // A serving mirror logs at info by default: where it listens, and
    // (not checked here: a minute is long) its line a minute.
    assert!(mirror.log().contains("listening on"), "{}", mirror.log());
}

/// 2. LanceDB away (its directory renamed) while the client writes: the
///    client sees no error, the journal holds the writes, and once the
///    directory is back they drain.
#[test]
fn lancedb_away_loses_nothing() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    apply_ok(&p);
    let mirror = Mirror::start(&p, free_port(), &d.join("mirror.log"));
    let away = d.join("lancedb.away");
    std::fs::rename(d.join("lancedb"), &away).unwrap();

    client_ok(&["batch", &mirror.url(), "30", "away"]);
    let s = mirror.wait_for(
        "a failed attempt while LanceDB is away",
        Duration::from_secs(60),
        |s| n(s, "failed") > 0 && s["waiting"]["basic"].is_string(),
    );
    assert!(n(&s, "pending") > 0, "{s:#}");
    assert_eq!(n(&s, "journaled"), 30, "{s:#}");
    assert_eq!(n(&s, "dropped"), 0, "{s:#}");
    assert!(n(&s, "both_ok") < 30, "{s:#}");

    std::fs::rename(&away, d.join("lancedb")).unwrap();
    let s = mirror.drained();
    assert_eq!(n(&s, "both_ok"), 30, "{s:#}");
    assert!(s["waiting"].as_object().unwrap().is_empty(), "{s:#}");
    verify_ok(&p, &mirror.log());
}

/// 3. SIGKILL in the middle of a stream of writes; the writing client
///    stops there too, so what reaches LanceDB after the restart comes
///    only from the journal's replay (pending entries, and those whose
///    answer the kill cut off); the journal drains, the table equals the
///    source.
#[test]
fn a_mirror_killed_in_a_stream_of_writes_loses_nothing() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    apply_ok(&p);
    let port = free_port();
    let log = d.join("mirror.log");
    let mut mirror = Mirror::start(&p, port, &log);
    // Its retries go to a file: a pipe read only at the end could fill.
    let writer_log = d.join("writer.log");
    let mut writer = client(&["writer", &mirror.url(), "300"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&writer_log).unwrap())
        .spawn()
        .unwrap();
    mirror.wait_for("60 writes", Duration::from_secs(120), |s| {
        n(s, "writes") >= 60
    });
    mirror.kill();
    let _ = writer.kill();
    let _ = writer.wait();
    let mirror = Mirror::start(&p, port, &log);
    let s = mirror.drained();
    assert_eq!(n(&s, "dropped"), 0, "{s:#}");
    // Only the replay can have written anything since the restart.
    assert_eq!(n(&s, "writes"), 0, "{s:#}");
    assert!(
        mirror.log().contains("replay") || n(&s, "mirrored_ok") > 0,
        "nothing was replayed: {s:#}\n{}",
        mirror.log()
    );
    verify_ok(&p, &mirror.log());
}

/// 3b. Killed at the two instants that matter, by failpoint: after the
///     journal line (the upstream never saw the write) and after the
///     upstream's answer but before the journal's. The restarted mirror
///     reads the unknown entry back from the upstream (after its grace)
///     and LanceDB ends equal to Chroma.
#[test]
fn a_mirror_killed_around_the_upstreams_answer_loses_nothing() {
    for point in ["mirror:journaled", "mirror:answered"] {
        let upstream = ChromaServer::start(CHROMA);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = plan(d, &upstream);
        apply_ok(&p);
        let port = free_port();
        let log = d.join("mirror.log");
        let mut mirror = Mirror::start_with(&p, port, &log, &[("LANCEFERRY_FAILPOINT", point)]);
        let said = client_ok(&["one", &mirror.url(), "fp-1"]);
        assert!(said.starts_with("error"), "{point}: {said}");
        let status = mirror.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{point}: {status}");
        if point == "mirror:answered" {
            // Chroma has the record, LanceDB not yet: verify must see that.
            let o = verify(&p);
            assert!(!o.status.success(), "{point}: {}", text(&o));
        }
        let mirror = Mirror::start(&p, port, &log);
        let s = mirror.drained();
        assert_eq!(n(&s, "mirrored_ok"), 1, "{point}: {s:#}");
        // The applied segment is deleted by the journal's file thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journal_files(&d.join("state")).is_empty() {
            assert!(Instant::now() < deadline, "{point}: segment not deleted");
            std::thread::sleep(Duration::from_millis(50));
        }
        verify_ok(&p, &mirror.log());
    }
}

/// 4. Four concurrent clients, 200 requests each on their own ids (per id
///    an upsert, an update, sometimes a delete): every id ends as its last
///    write left it in Chroma (nothing lost, nothing applied out of
///    order), and far fewer Lance commits than requests.
#[test]
fn four_concurrent_clients_lose_and_reorder_nothing() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    apply_ok(&p);
    let (before, _) = version(d);
    let mirror = Mirror::start(&p, free_port(), &d.join("mirror.log"));
    let url = mirror.url();
    let clients: Vec<Child> = (0..4)
        .map(|k| {
            client(&["load", &url, &k.to_string(), "200"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let s = mirror.drained();
    for key in ["writes", "journaled", "upstream_ok", "both_ok"] {
        assert_eq!(n(&s, key), 800, "{key}: {s:#}");
    }
    assert_eq!(n(&s, "dropped"), 0, "{s:#}");
    verify_ok(&p, &mirror.log());
    let (after, _) = version(d);
    assert!(
        after - before < 400,
        "{} Lance versions for 800 writes: not batched",
        after - before
    );
}

/// 5. Killed with entries pending (LanceDB away), then `mirror --drain`:
///    the journal empties without serving, and the table equals the source.
#[test]
fn drain_empties_the_journal_without_serving() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    let ps = p.to_str().unwrap();
    apply_ok(&p);
    let port = free_port();
    let mut mirror = Mirror::start(&p, port, &d.join("mirror.log"));
    let away = d.join("lancedb.away");
    std::fs::rename(d.join("lancedb"), &away).unwrap();
    client_ok(&["batch", &mirror.url(), "30", "drain"]);
    let s = mirror.stats();
    assert!(n(&s, "pending") > 0, "{s:#}");
    mirror.kill();
    std::fs::rename(&away, d.join("lancedb")).unwrap();
    assert!(!journal_files(&d.join("state")).is_empty());

    // Not running: status says so, with what the journal holds.
    let o = run(&["mirror", "status", ps]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is not running"), "{}", text(&o));
    // The table lacks the writes: verify must see that.
    assert!(!verify(&p).status.success());

    let o = run(&["mirror", ps, "--drain"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("drained"), "{}", text(&o));
    assert!(journal_files(&d.join("state")).is_empty(), "{}", text(&o));
    // It did not serve.
    assert!(get(port, "/lanceferry/stats").is_none());
    verify_ok(&p, &text(&o));
    // Nothing left: a second drain has nothing to do.
    let o = run(&["mirror", ps, "--drain"]);
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));
}

/// The mirror refuses to start on a target that `apply` has not made, and
/// names what to do.
#[test]
fn a_target_that_does_not_exist_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("m.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: m\nsource: {{ chroma: {{ url: \"http://127.0.0.1:9\" }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: basic\n",
            d.join("nowhere").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    let o = run(&[
        "mirror",
        p.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is not usable") && text(&o).contains("hint: run `lanceferry apply"),
        "{}",
        text(&o)
    );
}

/// The cut-over without a write freeze: `apply` (sync) runs again and again
/// while writes flow through the mirror. The plan's write gate keeps the
/// mirror's batches and the applies apart (neither writes a state the other
/// read earlier over the other's newer one); once the writes stop and the
/// journal drains, the table equals Chroma.
#[test]
fn applies_while_the_mirror_serves_leave_the_table_equal() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    apply_ok(&p);
    let mirror = Mirror::start(&p, free_port(), &d.join("mirror.log"));
    let mut writer = client(&["writer", &mirror.url(), "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut applies = 0;
    while writer.try_wait().unwrap().is_none() {
        let o = common::lanceferry()
            .args([
                "apply",
                p.to_str().unwrap(),
                "--auto-approve",
                "--lock-timeout",
                "60",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success() || (o.status.code() == Some(1) && text(&o).contains("hint:")),
            "{}",
            text(&o)
        );
        applies += 1;
    }
    assert!(writer.wait().unwrap().success());
    assert!(applies > 0);
    let s = mirror.drained();
    assert_eq!(n(&s, "dropped"), 0, "{s:#}");
    verify_ok(&p, &mirror.log());
}

/// The journal's bound is the plan's `mirror.journal_max_mb` (the flag
/// overrides it).
#[test]
fn the_journal_bound_comes_from_the_plan() {
    let upstream = ChromaServer::start(CHROMA);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &upstream);
    let t = std::fs::read_to_string(&p).unwrap().replace(
        "collections:",
        "mirror: { journal_max_mb: 3 }\ncollections:",
    );
    std::fs::write(&p, t).unwrap();
    apply_ok(&p);
    let mirror = Mirror::start(&p, free_port(), &d.join("mirror.log"));
    let s = mirror.wait_for("the stats", Duration::from_secs(30), |_| true);
    assert_eq!(n(&s, "journal_max_bytes"), 3 << 20, "{s:#}");
}
