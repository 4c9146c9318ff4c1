//! `lanceferry mirror`: a Chroma-compatible proxy that keeps LanceDB level
//! with Chroma while the application keeps writing (dual writes during the
//! cut-over).
//!
//! The application talks to the mirror as it talked to Chroma. Every
//! request is forwarded to the upstream Chroma server and its answer comes
//! back unchanged ([`proxy`]); a write on a collection the plan mirrors is
//! first recorded in a journal on disk ([`journal`]), and a background
//! writer ([`writer`]) makes the plan's LanceDB tables match the upstream
//! for the ids the journal holds, in few commits. The client's answer never
//! waits for LanceDB: if LanceDB is unavailable the journal keeps the
//! changes and the writer retries. A crash at any instant loses nothing:
//! on restart, entries not marked applied are applied again (the writer
//! writes the upstream's current state of each id, so that is safe).
//! Counters are served at `/lanceferry/stats` and `/metrics` ([`stats`]).
//!
//! Files live in the state directory of the plan and target
//! (`<state>/<plan>-<key>/mirror/`): `journal/` (segment files), `lock`
//! (held while a mirror serves or drains, so one journal has one owner),
//! and `mirror.json` (where the running mirror listens, for `mirror status`).

pub mod journal;
pub mod proxy;
pub mod stats;
pub mod writer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use journal::{Journal, JournalError, Op, Pending};
pub use stats::{MirrorInfo, Snapshot, Stats};
pub use writer::{Drained, WriterOptions};

use crate::plan::{Mode, Plan, Source as SourceSpec};
use crate::source::SourceError;
use crate::source::chroma_http::{ChromaHttp, HttpOptions, RetryPolicy};
use crate::state::{StateError, StateStore};
use crate::target::{LanceTarget, TargetError};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8001";
pub const DEFAULT_JOURNAL_MAX_MB: u64 = 256;
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(200);
pub const DEFAULT_BATCH_MAX_IDS: usize = 5000;
/// How long an entry whose upstream outcome is unknown (a crash, a lost
/// connection) waits before its ids are read: a request the upstream had
/// received may still be in its hands, and reading before it is applied
/// would mark the entry applied with the old state.
pub const DEFAULT_IN_FLIGHT_GRACE: Duration = Duration::from_secs(10);

/// The writer's own reads retry briefly: it retries whole batches itself,
/// with backoff, without holding up the other collections.
const WRITER_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    first_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(1),
};

/// Errors of the mirror. Each names what it is about and ends with a hint.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Journal(Box<JournalError>),
    #[error(transparent)]
    Source(Box<SourceError>),
    #[error(transparent)]
    Target(Box<TargetError>),
    #[error(transparent)]
    State(Box<StateError>),
    #[error(
        "plan `{plan}` reads {source_desc}, not a Chroma server, so there is no upstream to mirror\nhint: give the server that applications write to with `--upstream http://HOST:PORT`, or make the plan read it (`source: {{ chroma: {{ url: ... }} }}`)"
    )]
    NoUpstream { plan: String, source_desc: String },
    #[error(
        "`{addr}` is not an address to listen on: {reason}\nhint: write HOST:PORT, e.g. `--listen 127.0.0.1:8001`"
    )]
    BadListen { addr: String, reason: String },
    #[error(
        "the upstream `{upstream}` is the mirror's own address `{listen}`\nhint: `--upstream` (or the plan's `source.chroma.url`) must name the Chroma server itself; point the applications, not the plan, at the mirror"
    )]
    Loop { upstream: String, listen: String },
    #[error(
        "cannot listen on `{addr}`: {source}\nhint: another process may use the port (`--listen 127.0.0.1:OTHER_PORT`), or a port below 1024 needs privileges"
    )]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the mirror of plan `{plan}` is already running or draining ({holder})\nhint: one journal has one owner: stop that process first; `lanceferry mirror status {plan_file}` shows it"
    )]
    Busy {
        plan: String,
        plan_file: String,
        holder: String,
    },
    #[error(
        "the LanceDB target `{uri}` is not usable: {reason}\nhint: run `lanceferry apply {plan_file}` first (the mirror writes into the tables it created), and check the directory's permissions"
    )]
    TargetUnusable {
        uri: String,
        reason: String,
        plan_file: String,
    },
    #[error(
        "collection `{collection}` maps no column from `id`, so the mirror cannot tell which row a write changes\nhint: add `{{ name: id, from: id }}` to its `columns:` in the plan (and re-create the table with `mode: replace`), or leave the collection out of the plan the mirror serves"
    )]
    NoIdColumn { collection: String },
    #[error(
        "collection `{collection}` is copied into two tables (`{first}` and `{second}`); the mirror keeps one table per collection\nhint: serve a plan that maps each collection once (a copy of this plan without the second mapping), and keep the other table level with `lanceferry apply` (mode: sync)"
    )]
    SourceTwice {
        collection: String,
        first: String,
        second: String,
    },
    #[error(
        "the mirror journal `{path}` still holds {pending} entr(ies) after repeated failures: {reasons}\nhint: fix what the reason says and run `lanceferry mirror PLAN --drain` again; nothing is lost, the journal keeps every entry"
    )]
    DrainStuck {
        path: PathBuf,
        pending: u64,
        reasons: String,
    },
    #[error(
        "`{path}`: {source}\nhint: check that the state directory (`state.path` in the plan) is writable"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot prepare the HTTP client for the upstream `{url}`: {reason}\nhint: check `source.chroma` in the plan (URL, `ca_cert`)"
    )]
    Client { url: String, reason: String },
}

macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for MirrorError {
            fn from(e: $ty) -> Self {
                MirrorError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Journal: JournalError,
    Source: SourceError,
    Target: TargetError,
    State: StateError
);

/// How `mirror` runs.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// HOST:PORT to listen on.
    pub listen: String,
    /// The upstream Chroma, when not the plan's `source.chroma.url`.
    pub upstream: Option<String>,
    /// The journal's size limit (`--journal-max-mb`, else the plan's
    /// `mirror: { journal_max_mb }`, else the default).
    pub journal_max_mb: u64,
    pub batch_window: Duration,
    pub batch_max_ids: usize,
    pub in_flight_grace: Duration,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            listen: DEFAULT_LISTEN.into(),
            upstream: None,
            journal_max_mb: DEFAULT_JOURNAL_MAX_MB,
            batch_window: DEFAULT_BATCH_WINDOW,
            batch_max_ids: DEFAULT_BATCH_MAX_IDS,
            in_flight_grace: DEFAULT_IN_FLIGHT_GRACE,
        }
    }
}

impl MirrorOptions {
    fn writer(&self) -> WriterOptions {
        WriterOptions {
            window: self.batch_window,
            max_ids: self.batch_max_ids.max(1),
            grace: self.in_flight_grace,
        }
    }

    fn journal_max_bytes(&self) -> u64 {
        self.journal_max_mb.max(1).saturating_mul(1 << 20)
    }
}

/// Where a plan's mirror keeps its files.
#[derive(Debug, Clone)]
pub struct MirrorPaths {
    /// `<state>/<plan>-<key>/mirror`.
    pub dir: PathBuf,
    pub journal: PathBuf,
    /// `mirror.json`: where the running mirror listens.
    pub info: PathBuf,
    pub lock: PathBuf,
}

impl MirrorPaths {
    /// In the state directory of the plan *and target* (like apply's): the
    /// same plan mirrored into dev and prod keeps two journals, and one
    /// target's entries are never applied to the other.
    pub fn for_plan(plan: &Plan) -> Self {
        let dir = StateStore::for_plan(plan).dir.join("mirror");
        MirrorPaths {
            journal: dir.join("journal"),
            info: dir.join("mirror.json"),
            lock: dir.join("lock"),
            dir,
        }
    }
}

/// The upstream's connection settings: the plan's source, or `--upstream`
/// with the plan's tenant, database and token.
fn upstream_options(plan: &Plan, over: Option<&str>) -> Result<HttpOptions, MirrorError> {
    let mut opts = match (&plan.source, over) {
        (
            SourceSpec::ChromaHttp {
                url,
                tenant,
                database,
                token,
                token_header,
                timeout_secs,
                ca_cert,
            },
            over,
        ) => HttpOptions {
            url: over.unwrap_or(url).to_string(),
            tenant: tenant.clone(),
            database: database.clone(),
            token: token.clone(),
            token_header: *token_header,
            timeout: Duration::from_secs(*timeout_secs),
            ca_cert: ca_cert.clone(),
            retry: WRITER_RETRY,
        },
        (
            SourceSpec::ChromaDir {
                tenant, database, ..
            },
            Some(url),
        ) => HttpOptions {
            tenant: tenant.clone(),
            database: database.clone(),
            retry: WRITER_RETRY,
            ..HttpOptions::new(url)
        },
        (other, _) => {
            return Err(MirrorError::NoUpstream {
                plan: plan.name.clone(),
                source_desc: other.describe(),
            });
        }
    };
    opts.url = opts.url.trim_end_matches('/').to_string();
    Ok(opts)
}

/// The client that forwards requests: keeps connections to the upstream
/// alive, never decompresses (the client's `accept-encoding` goes through
/// and the body comes back as sent) and never follows redirects.
fn forward_client(opts: &HttpOptions) -> Result<reqwest::Client, MirrorError> {
    let shown = crate::plan::redact::url(&opts.url);
    let mut builder = reqwest::Client::builder()
        // Straight to the upstream: an `HTTP(S)_PROXY` of the environment
        // would see the clients' tokens.
        .no_proxy()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .connect_timeout(opts.timeout.min(Duration::from_secs(10)));
    if let Some(ca) = &opts.ca_cert {
        let pem = std::fs::read(ca).map_err(|source| MirrorError::Io {
            path: ca.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| MirrorError::Client {
                url: shown.clone(),
                reason: format!("the CA certificate `{}`: {e}", ca.display()),
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| MirrorError::Client {
        url: shown,
        reason: e.to_string(),
    })
}

fn parse_listen(addr: &str) -> Result<SocketAddr, MirrorError> {
    addr.parse()
        .map_err(|e: std::net::AddrParseError| MirrorError::BadListen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Refuses an upstream that is the mirror itself (requests would loop).
fn refuse_loop(upstream: &str, listen: SocketAddr) -> Result<(), MirrorError> {
    let Ok(url) = reqwest::Url::parse(upstream) else {
        return Ok(()); // the HTTP source reports a bad URL with its own hint
    };
    let same_port = url.port_or_known_default() == Some(listen.port());
    let local_host = match url.host_str() {
        Some("localhost") => listen.ip().is_loopback() || listen.ip().is_unspecified(),
        Some(h) => h
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| {
                ip == listen.ip() || (ip.is_loopback() && listen.ip().is_unspecified())
            }),
        None => false,
    };
    if same_port && local_host {
        return Err(MirrorError::Loop {
            upstream: crate::plan::redact::url(upstream),
            listen: listen.to_string(),
        });
    }
    Ok(())
}

/// Holds the mirror's lock (the kernel releases it however the process
/// ends, like apply's).
struct MirrorLock {
    _file: std::fs::File,
}

fn take_lock(plan: &Plan, paths: &MirrorPaths) -> Result<MirrorLock, MirrorError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError::Io { path, source }
    };
    std::fs::create_dir_all(&paths.dir).map_err(io(&paths.dir))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.lock)
        .map_err(io(&paths.lock))?;
    match file.try_lock() {
        Ok(()) => Ok(MirrorLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = read_info(&paths.info)
                .map(|i| format!("pid {} listening on {}", i.pid, i.listen))
                .unwrap_or_else(|| "another lanceferry process; `--drain`, or starting".into());
            Err(MirrorError::Busy {
                plan: plan.name.clone(),
                plan_file: plan.file.display().to_string(),
                holder,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(&paths.lock)(e)),
    }
}

fn read_info(path: &Path) -> Option<MirrorInfo> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A local target must be an existing, writable directory (apply made it);
/// any target must list its tables.
async fn open_target(plan: &Plan) -> Result<(LanceTarget, Vec<String>), MirrorError> {
    let uri = &plan.target.uri;
    let unusable = |reason: String| MirrorError::TargetUnusable {
        uri: uri.clone(),
        reason,
        plan_file: plan.file.display().to_string(),
    };
    let local = uri.strip_prefix("file://").unwrap_or(uri);
    if !local.contains("://") {
        let dir = Path::new(local);
        if !dir.is_dir() {
            return Err(unusable("the directory does not exist".into()));
        }
        let probe = dir.join(format!(".lanceferry-mirror-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| unusable(format!("cannot write in it: {e}")))?;
    }
    let target = LanceTarget::connect(&plan.target).await?;
    let tables = target
        .table_names()
        .await
        .map_err(|e| unusable(e.to_string().lines().next().unwrap_or_default().to_string()))?;
    Ok((target, tables))
}

/// What serving and draining both need, checked before anything is served.
struct Setup {
    paths: MirrorPaths,
    upstream: HttpOptions,
    target: LanceTarget,
    journal: Journal,
    source: ChromaHttp,
    _lock: MirrorLock,
}

async fn prepare(plan: &Plan, opts: &MirrorOptions) -> Result<Setup, MirrorError> {
    let upstream = upstream_options(plan, opts.upstream.as_deref())?;
    let mut tables = std::collections::HashMap::new();
    for c in &plan.collections {
        if c.id_column().is_none() {
            return Err(MirrorError::NoIdColumn {
                collection: c.source.clone(),
            });
        }
        if let Some(first) = tables.insert(c.source.clone(), c.table.clone()) {
            return Err(MirrorError::SourceTwice {
                collection: c.source.clone(),
                first,
                second: c.table.clone(),
            });
        }
    }
    let paths = MirrorPaths::for_plan(plan);
    let lock = take_lock(plan, &paths)?;
    let (target, tables) = open_target(plan).await?;
    for c in &plan.collections {
        if !tables.contains(&c.table) {
            tracing::warn!(
                "mirror: table `{}` does not exist yet: writes to `{}` wait in the journal until `lanceferry apply {}` creates it",
                c.table,
                c.source,
                plan.file.display()
            );
        }
        if matches!(c.mode, Mode::Create | Mode::Append | Mode::Replace) {
            tracing::warn!(
                "mirror: collection `{}` has `mode: {}`; the mirror merges on the id, and the next `apply` of that mode refuses or rewrites a table written by someone else: `mode: sync` is the mode for a cut-over",
                c.source,
                c.mode
            );
        }
    }
    let (journal, replayed) = Journal::open(&paths.journal, opts.journal_max_bytes())?;
    if replayed.pending > 0 {
        tracing::info!(
            "mirror: the journal holds {} entr(ies) from the last run ({} whose upstream outcome is unknown: read again after {} s); applying them",
            replayed.pending,
            replayed.unknown,
            opts.in_flight_grace.as_secs()
        );
    }
    for t in &replayed.torn {
        tracing::info!(
            "mirror: `{}` ended in a torn line (a crash while writing it); cut off",
            t.display()
        );
    }
    let source = ChromaHttp::new(upstream.clone())?;
    match source.api_generation().await {
        Ok(v) => tracing::info!(
            "mirror: upstream {} speaks API {v}",
            crate::plan::redact::url(&upstream.url)
        ),
        // Wrong credentials or database: the writer could never read.
        Err(e @ (SourceError::Unauthorized { .. } | SourceError::NoSuchDatabase { .. })) => {
            return Err(e.into());
        }
        Err(e) => tracing::warn!(
            "mirror: the upstream is not answering yet; serving anyway (requests fail until it answers, journaled writes wait): {e}"
        ),
    }
    Ok(Setup {
        paths,
        upstream,
        target,
        journal,
        source,
        _lock: lock,
    })
}

/// Serves until SIGINT or SIGTERM: the proxy, the writer, a log line a
/// minute.
pub async fn serve(plan: Plan, opts: MirrorOptions) -> Result<(), MirrorError> {
    let addr = parse_listen(&opts.listen)?;
    let over = upstream_options(&plan, opts.upstream.as_deref())?;
    refuse_loop(&over.url, addr)?;
    let setup = prepare(&plan, &opts).await?;
    let client = forward_client(&setup.upstream)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MirrorError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| MirrorError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "mirror: listening on {local}, beyond this machine: anyone who reaches it reaches the upstream Chroma with their own credentials"
        );
    }
    let info = Arc::new(MirrorInfo {
        plan: plan.name.clone(),
        pid: std::process::id(),
        listen: local.to_string(),
        upstream: crate::plan::redact::url(&setup.upstream.url),
        started: Utc::now(),
    });
    crate::state::write_atomic(
        &setup.paths.info,
        &serde_json::to_vec_pretty(info.as_ref()).expect("mirror info serializes"),
    )?;
    let stats = Arc::new(Stats::default());
    let mirrored: HashSet<String> = plan.collections.iter().map(|c| c.source.clone()).collect();
    let proxy = Arc::new(proxy::Proxy::new(
        client,
        &setup.upstream.url,
        &setup.upstream.tenant,
        &setup.upstream.database,
        mirrored,
        setup.journal.clone(),
        stats.clone(),
        info.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = writer::Writer::new(
        &plan,
        setup.source.clone(),
        setup.target.clone(),
        setup.journal.clone(),
        stats.clone(),
        opts.writer(),
    );
    let writer = tokio::spawn(writer.run(stop_rx.clone()));
    let ticker = tokio::spawn(log_every_minute(
        stats.clone(),
        setup.journal.clone(),
        info.clone(),
        stop_rx,
    ));
    tracing::info!(
        "mirror of plan `{}` listening on http://{local}, forwarding to {}; journal `{}`",
        plan.name,
        info.upstream,
        setup.paths.journal.display()
    );
    accept(proxy, listener, shutdown_signal()).await;
    tracing::info!("mirror: stopping; applying what is ready (at most 10 s)");
    let _ = stop_tx.send(true);
    let _ = writer.await;
    let _ = ticker.await;
    setup.journal.sync().await;
    let _ = std::fs::remove_file(&setup.paths.info);
    let p = setup.journal.pending();
    if p.entries > 0 {
        tracing::warn!(
            "mirror: stopped with {} journal entr(ies) pending; the next `lanceferry mirror` (or `--drain`) applies them",
            p.entries
        );
    }
    Ok(())
}

/// Accepts connections until `shutdown` completes; each connection is
/// served on a task of its own (HTTP/1.1, kept alive).
async fn accept(
    proxy: Arc<proxy::Proxy>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment.
                        tracing::warn!("mirror: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
                    });
                    let conn = {
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder.timer(hyper_util::rt::TokioTimer::new());
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    };
                    if let Err(e) = conn.await {
                        tracing::debug!("mirror: a connection ended: {e}");
                    }
                });
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn log_every_minute(
    stats: Arc<Stats>,
    journal: Journal,
    info: Arc<MirrorInfo>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        }
        let s = stats.snapshot(&info, &journal.pending());
        if s.dropped > 0 || !s.waiting.is_empty() {
            tracing::warn!("{}", s.log_line());
        } else {
            tracing::info!("{}", s.log_line());
        }
    }
}

/// `mirror PLAN --drain`: applies everything the journal holds, without
/// serving, then returns.
pub async fn drain(plan: Plan, opts: MirrorOptions) -> Result<Drained, MirrorError> {
    let setup = prepare(&plan, &opts).await?;
    let writer = writer::Writer::new(
        &plan,
        setup.source,
        setup.target,
        setup.journal,
        Arc::new(Stats::default()),
        opts.writer(),
    );
    writer.drain().await
}

/// What `mirror status` found.
#[derive(Debug, Clone)]
pub enum Status {
    /// The mirror answered with its statistics.
    Running(Box<Snapshot>),
    /// No mirror answered; what its journal holds, read from disk.
    Stopped {
        info: Option<MirrorInfo>,
        pending: Pending,
        reason: String,
    },
}

/// Asks the running mirror of `plan` for its statistics (found through
/// `mirror.json`), or reads its journal when none answers.
pub async fn status(plan: &Plan, journal_max_mb: u64) -> Result<Status, MirrorError> {
    let paths = MirrorPaths::for_plan(plan);
    let info = read_info(&paths.info);
    let reason = match &info {
        None => format!(
            "no mirror has recorded an address in `{}`",
            paths.info.display()
        ),
        Some(i) => match fetch_stats(&i.listen).await {
            Ok(s) => return Ok(Status::Running(Box::new(s))),
            Err(why) => format!(
                "the mirror recorded in `{}` (pid {}, {}) does not answer: {why}",
                paths.info.display(),
                i.pid,
                i.listen
            ),
        },
    };
    let pending = if paths.journal.is_dir() {
        Journal::inspect(&paths.journal, journal_max_mb.saturating_mul(1 << 20))?
    } else {
        Pending::default()
    };
    Ok(Status::Stopped {
        info,
        pending,
        reason,
    })
}

async fn fetch_stats(listen: &str) -> Result<Snapshot, String> {
    let mut addr: SocketAddr = listen.parse().map_err(|e| format!("{e}"))?;
    // Listening on every address: ask on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("http://{addr}{}", proxy::STATS_PATH))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.json::<Snapshot>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Vars, load_str};

    fn plan(source: &str) -> Plan {
        let text = format!(
            "version: 1\nname: m\nsource: {source}\ntarget: {{ lancedb: {{ uri: ./out }} }}\ncollections:\n  - source: docs\n    mode: sync\n"
        );
        load_str(&text, Path::new("m.yaml"), &Vars::empty()).unwrap()
    }

    #[test]
    fn the_upstream_is_the_plans_server_or_the_flag() {
        let p = plan("{ chroma: { url: \"http://127.0.0.1:8000/\" } }");
        assert_eq!(
            upstream_options(&p, None).unwrap().url,
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            upstream_options(&p, Some("http://10.0.0.2:9000"))
                .unwrap()
                .url,
            "http://10.0.0.2:9000"
        );
        let dir = plan("{ chroma: { path: ./db } }");
        let err = upstream_options(&dir, None).unwrap_err();
        assert!(matches!(err, MirrorError::NoUpstream { .. }), "{err}");
        assert!(err.to_string().contains("\nhint: "), "{err}");
        assert!(upstream_options(&dir, Some("http://127.0.0.1:8000")).is_ok());
    }

    #[test]
    fn an_upstream_that_is_the_mirror_itself_is_refused() {
        let listen: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        assert!(refuse_loop("http://127.0.0.1:8001", listen).is_err());
        assert!(refuse_loop("http://localhost:8001", listen).is_err());
        assert!(refuse_loop("http://127.0.0.1:8000", listen).is_ok());
        let any: SocketAddr = "0.0.0.0:8001".parse().unwrap();
        assert!(refuse_loop("http://127.0.0.1:8001", any).is_err());
        assert!(refuse_loop("http://10.1.2.3:8001", listen).is_ok());
    }

    #[test]
    fn the_journal_lives_with_the_state_of_plan_and_target() {
        let p = plan("{ chroma: { url: \"http://127.0.0.1:8000\" } }");
        let paths = MirrorPaths::for_plan(&p);
        assert!(paths.journal.starts_with(StateStore::for_plan(&p).dir));
        assert!(paths.journal.ends_with("mirror/journal"));
        assert!(paths.info.ends_with("mirror/mirror.json"));
    }
}
