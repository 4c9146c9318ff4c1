//! The mirror's HTTP side: a proxy that speaks Chroma's API by forwarding
//! it, and journals the writes on mirrored collections on the way.
//!
//! Every request goes to the upstream and its answer comes back unchanged:
//! method, path and query, headers (hop-by-hop ones aside: they describe
//! one connection, not the message), body, status, and the response body
//! streamed as it arrives. The upstream client neither decompresses nor
//! follows redirects, so what the client sees is what Chroma sent. Headers
//! are never logged (they carry the clients' tokens).
//!
//! A write (`POST .../collections/{id}/add|upsert|update|delete`, API v2
//! or v1) on a collection the plan mirrors is journaled first: the ids it
//! touches (for a delete by filter, the ids the filter selects, asked from
//! the upstream with the client's own credentials just before), written
//! and synced, then forwarded, then marked with the upstream's answer.
//! Collections are addressed by id in these routes; the id's name is found
//! by listing the plan's tenant and database once and cached (a collection
//! renamed or deleted through the proxy clears the cache).
//!
//! A delete by filter holds its collection's lock exclusively from the
//! resolution to the answer, and every other write holds it shared: a
//! record added meanwhile through the proxy can then not match the filter
//! unseen.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::journal::{Journal, Op};
use super::stats::{MirrorInfo, Stats, inc};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The mirror's own endpoints (never forwarded).
pub const STATS_PATH: &str = "/lanceferry/stats";
pub const METRICS_PATH: &str = "/metrics";

/// How often "the journal is full" is said again while it stays full.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

/// A write route: `POST /api/v2/tenants/{t}/databases/{d}/collections/{id}/{op}`
/// or `POST /api/v1/collections/{id}/{op}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRoute {
    pub api: Api,
    /// v2 only (v1 collection ids are global).
    pub tenant: Option<String>,
    pub database: Option<String>,
    pub collection_id: String,
    pub op: Op,
}

/// The path's segments, percent-decoded.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

pub fn classify(method: &Method, path: &str) -> Option<WriteRoute> {
    if method != Method::POST {
        return None;
    }
    let segs = segments(path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [
            "api",
            "v2",
            "tenants",
            t,
            "databases",
            d,
            "collections",
            id,
            op,
        ] => Some(WriteRoute {
            api: Api::V2,
            tenant: Some(t.to_string()),
            database: Some(d.to_string()),
            collection_id: id.to_string(),
            op: Op::from_route(op)?,
        }),
        ["api", "v1", "collections", id, op] => Some(WriteRoute {
            api: Api::V1,
            tenant: None,
            database: None,
            collection_id: id.to_string(),
            op: Op::from_route(op)?,
        }),
        _ => None,
    }
}

/// The collection a request renames or deletes (`PUT`/`DELETE` on a
/// collection itself), by the name or id in its path.
fn collection_changed(method: &Method, path: &str) -> Option<String> {
    if method != Method::PUT && method != Method::DELETE {
        return None;
    }
    let segs = segments(path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["api", "v2", "tenants", _, "databases", _, "collections", c]
        | ["api", "v1", "collections", c] => Some(c.to_string()),
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A path segment or query value, percent-encoded (all but unreserved).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// Header names a `Connection:` header lists: hop-by-hop too.
fn connection_tokens(h: &HeaderMap) -> HashSet<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers to send on: all but hop-by-hop ones, `host` (the upstream's
/// own is set from its URL), `content-length` (set from the body) and
/// `expect` (the body is already here).
fn forward_headers(h: &HeaderMap) -> HeaderMap {
    let tokens = connection_tokens(h);
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        if is_hop_by_hop(name)
            || tokens.contains(name.as_str())
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The headers for the mirror's own requests on a client's behalf (the
/// collection listing, a delete's filter): its credentials and the like,
/// without what describes the client's body or the encodings it accepts
/// (the mirror reads these answers itself).
fn own_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = forward_headers(h);
    let drop: Vec<HeaderName> = out
        .keys()
        .filter(|n| n.as_str().starts_with("content-") || n.as_str().starts_with("accept"))
        .cloned()
        .collect();
    for n in drop {
        out.remove(n);
    }
    out
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| -> BoxError { match never {} })
        .boxed_unsync()
}

/// A response body that streams the upstream's as it arrives.
fn streamed(resp: reqwest::Response) -> ProxyBody {
    let stream = futures::stream::try_unfold(resp, |mut resp| async move {
        match resp.chunk().await {
            Ok(Some(chunk)) => Ok(Some((Frame::data(chunk), resp))),
            Ok(None) => Ok(None),
            Err(e) => Err(BoxError::from(e)),
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// A Chroma-shaped error (clients read `error` and `message`).
fn error_response(status: StatusCode, message: String) -> Response<ProxyBody> {
    let body = json!({ "error": "LanceferryMirrorError", "message": message }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The upstream's answer as the client's.
fn relay(result: Result<reqwest::Response, String>) -> Response<ProxyBody> {
    let resp = match result {
        Ok(r) => r,
        Err(why) => return error_response(StatusCode::BAD_GATEWAY, why),
    };
    let tokens = connection_tokens(resp.headers());
    let mut headers = HeaderMap::with_capacity(resp.headers().len());
    for (name, value) in resp.headers() {
        if !is_hop_by_hop(name) && !tokens.contains(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let status = resp.status();
    let mut r = Response::new(streamed(resp));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// What a write request's body says about the records it touches. Every
/// other field (vectors, documents, metadata) is skipped, not kept.
#[derive(Debug, Deserialize)]
struct WriteBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default, rename = "where")]
    where_: Option<Value>,
    #[serde(default)]
    where_document: Option<Value>,
}

impl WriteBody {
    /// A delete that selects by filter (or selects everything): its ids
    /// must be asked from the upstream.
    fn selects_by_filter(&self) -> bool {
        self.where_.is_some() || self.where_document.is_some() || self.ids.is_none()
    }
}

/// Whether a collection (by id) is one the plan mirrors.
enum Lookup {
    Mirrored(String),
    Other,
    /// The listing failed: whether it is mirrored is unknown.
    Unknown(String),
}

/// Marks a journal entry with the upstream's answer; if the request is
/// abandoned first (the client went away, the task was dropped), marks it
/// "unknown", so the writer reads its ids once the grace has passed.
struct OutcomeGuard {
    journal: Journal,
    seq: u64,
    done: bool,
}

impl OutcomeGuard {
    fn answered(mut self, ok: bool, status: u16) {
        self.journal.outcome(self.seq, Some(ok), Some(status));
        self.done = true;
    }

    /// An answer that does not settle it (a server error).
    fn unsettled(mut self, status: u16) {
        self.journal.outcome(self.seq, None, Some(status));
        self.done = true;
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        if !self.done {
            self.journal.outcome(self.seq, None, None);
        }
    }
}

pub struct Proxy {
    client: reqwest::Client,
    /// The upstream's base URL, without a trailing `/`.
    base: String,
    /// The plan's tenant and database (v2 writes elsewhere pass through).
    tenant: String,
    database: String,
    /// Source names of the plan's collections.
    mirrored: HashSet<String>,
    /// Collection id → name in the plan's database (`None`: not there).
    names: Mutex<HashMap<String, Option<String>>>,
    /// Per mirrored collection: shared by writes, exclusive for a delete
    /// by filter.
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    journal: Journal,
    stats: Arc<Stats>,
    info: Arc<MirrorInfo>,
    last_full_log: Mutex<Option<Instant>>,
}

impl Proxy {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: reqwest::Client,
        base: &str,
        tenant: &str,
        database: &str,
        mirrored: HashSet<String>,
        journal: Journal,
        stats: Arc<Stats>,
        info: Arc<MirrorInfo>,
    ) -> Self {
        Proxy {
            client,
            base: base.trim_end_matches('/').to_string(),
            tenant: tenant.to_string(),
            database: database.to_string(),
            mirrored,
            names: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            journal,
            stats,
            info,
            last_full_log: Mutex::new(None),
        }
    }

    pub fn snapshot(&self) -> super::Snapshot {
        self.stats.snapshot(&self.info, &self.journal.pending())
    }

    /// One request, whatever happens: errors become responses.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::GET {
            match req.uri().path() {
                STATS_PATH => {
                    let body = serde_json::to_string_pretty(&self.snapshot())
                        .expect("statistics serialize");
                    let mut r = Response::new(full(body));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    return r;
                }
                METRICS_PATH => {
                    let mut r = Response::new(full(self.snapshot().prometheus()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    return r;
                }
                _ => {}
            }
        }
        inc(&self.stats.requests);
        let (parts, body) = req.into_parts();
        // Chroma's request bodies are bounded by its batch size: read whole,
        // so a write's ids are known before it is forwarded.
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("lanceferry mirror: reading the request failed: {e}"),
                );
            }
        };
        if let Some(route) = classify(&parts.method, parts.uri.path()) {
            // In a task of its own: a client that hangs up must not cancel
            // a write between its journal line and the upstream's answer
            // (the outcome would stay unknown, or never be recorded).
            let me = self.clone();
            return match tokio::spawn(async move { me.write(parts, body, route).await }).await {
                Ok(result) => relay(result),
                Err(e) => error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("lanceferry mirror: the write failed inside the mirror: {e}"),
                ),
            };
        }
        if let Some(c) = collection_changed(&parts.method, parts.uri.path()) {
            self.forget_names(&c);
        }
        relay(self.forward(&parts, body).await)
    }

    /// Sends a request on to the upstream, as it came.
    async fn forward(&self, parts: &Parts, body: Bytes) -> Result<reqwest::Response, String> {
        let url = format!(
            "{}{}",
            self.base,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut req = self
            .client
            .request(parts.method.clone(), url)
            .headers(forward_headers(&parts.headers));
        if !body.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH) {
            req = req.body(body);
        }
        req.send().await.map_err(|e| {
            format!(
                "lanceferry mirror: the upstream Chroma at `{}` did not answer: {}",
                self.info.upstream,
                crate::source::chroma_http::describe_reqwest(&e)
            )
        })
    }

    /// A write: journaled (when its collection is mirrored), forwarded,
    /// marked with the answer.
    async fn write(
        &self,
        parts: Parts,
        body: Bytes,
        route: WriteRoute,
    ) -> Result<reqwest::Response, String> {
        let name = match self.lookup(&parts, &route).await {
            Lookup::Mirrored(n) => n,
            Lookup::Other => return self.forward(&parts, body).await,
            Lookup::Unknown(why) => {
                // Possibly a mirrored collection: a write the upstream
                // takes is one LanceDB may miss, and said so.
                let result = self.forward(&parts, body).await;
                if !result.as_ref().is_ok_and(|r| r.status().is_client_error()) {
                    inc(&self.stats.dropped);
                    tracing::warn!(
                        "mirror: a write to collection id `{}` was forwarded unjournaled: which collection it is could not be found ({why}); counted as dropped",
                        route.collection_id
                    );
                }
                return result;
            }
        };
        inc(&self.stats.writes);
        let parsed: Option<WriteBody> = serde_json::from_slice(&body).ok();
        let by_filter =
            route.op == Op::Delete && parsed.as_ref().is_some_and(WriteBody::selects_by_filter);
        // Held until the upstream answers (the body streams after).
        let lock = self.lock_for(&name);
        let (_shared, _exclusive) = if by_filter {
            (None, Some(lock.write_owned().await))
        } else {
            (Some(lock.read_owned().await), None)
        };
        let ids: Result<Vec<String>, String> = match &parsed {
            None => Err("its body is not the JSON of a Chroma write".into()),
            Some(b) if by_filter => self.resolve(&parts, &route, b).await,
            Some(b) => Ok(b.ids.clone().unwrap_or_default()),
        };
        let mut guard = None;
        let mut unjournaled = None;
        match ids {
            Ok(ids) => match self.journal.record(&name, route.op, ids).await {
                Ok(Some(seq)) => {
                    inc(&self.stats.journaled);
                    guard = Some(OutcomeGuard {
                        journal: self.journal.clone(),
                        seq,
                        done: false,
                    });
                }
                Ok(None) => {
                    self.say_full(&name);
                    unjournaled = Some("the journal is full".to_string());
                }
                Err(e) => {
                    tracing::error!("{e}");
                    unjournaled = Some("the journal could not be written".to_string());
                }
            },
            Err(why) => unjournaled = Some(format!("its ids could not be known: {why}")),
        }
        crate::failpoint::hit("mirror:journaled");
        let result = self.forward(&parts, body).await;
        match (&result, guard) {
            (Ok(resp), guard) => {
                let status = resp.status();
                if status.is_success() {
                    inc(&self.stats.upstream_ok);
                }
                crate::failpoint::hit("mirror:answered");
                match guard {
                    // A server error (or a gateway's 502/504) does not say
                    // the write was not applied, nor that it is finished:
                    // the outcome stays unknown, and the ids are read
                    // after the grace.
                    Some(g) if status.is_server_error() => g.unsettled(status.as_u16()),
                    Some(g) => g.answered(status.is_success(), status.as_u16()),
                    // A write the upstream refused changed nothing: lost
                    // nothing either.
                    None if !status.is_client_error() => self.dropped(&name, &route, unjournaled),
                    None => {}
                }
            }
            // The guard, dropped here, marks the outcome unknown.
            (Err(_), Some(_)) => {}
            (Err(_), None) => self.dropped(&name, &route, unjournaled),
        }
        result
    }

    fn dropped(&self, name: &str, route: &WriteRoute, why: Option<String>) {
        inc(&self.stats.dropped);
        tracing::warn!(
            "mirror: a `{}` on collection `{name}` was forwarded without a journal entry ({}); LanceDB misses it until `lanceferry apply` (mode: sync)",
            route.op.as_str(),
            why.unwrap_or_else(|| "unknown reason".into())
        );
    }

    /// Says loudly, at most every [`FULL_LOG_EVERY`], that writes are no
    /// longer journaled.
    fn say_full(&self, name: &str) {
        let mut last = self
            .last_full_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < FULL_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let p = self.journal.pending();
        tracing::error!(
            "mirror journal `{}` is full ({} of {} bytes, {} entries pending): writes to `{name}` and the other mirrored collections are forwarded but NOT journaled (stats: dropped), so LanceDB misses them until `lanceferry apply` (mode: sync); raise --journal-max-mb, or fix what keeps the journal from draining (`lanceferry mirror status`)",
            self.journal.dir().display(),
            p.bytes,
            p.max_bytes,
            p.entries
        );
    }

    fn lock_for(&self, name: &str) -> Arc<RwLock<()>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Drops the id → name cache: a collection was renamed or deleted.
    fn forget_names(&self, name_or_id: &str) {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if self.mirrored.contains(name_or_id) {
            tracing::warn!(
                "mirror: collection `{name_or_id}`, which the plan mirrors, is being renamed or deleted upstream; the mirror leaves its table as it is (`lanceferry plan` shows what `apply` would do)"
            );
        }
    }

    async fn lookup(&self, parts: &Parts, route: &WriteRoute) -> Lookup {
        if route.api == Api::V2
            && (route.tenant.as_deref() != Some(self.tenant.as_str())
                || route.database.as_deref() != Some(self.database.as_str()))
        {
            return Lookup::Other;
        }
        let cached = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&route.collection_id)
            .cloned();
        let name = match cached {
            Some(n) => n,
            // Not known: ask the upstream for the ids of the mirrored
            // collections by name (a handful of requests, never a listing
            // that a concurrent delete could shift). A miss is not cached:
            // a mirrored collection created later is found then.
            None => match self.mirrored_ids(&parts.headers, route.api).await {
                Ok(all) => {
                    let mut names = self
                        .names
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (id, name) in all {
                        names.insert(id, Some(name));
                    }
                    names.get(&route.collection_id).cloned().flatten()
                }
                Err(why) => return Lookup::Unknown(why),
            },
        };
        match name {
            Some(n) if self.mirrored.contains(&n) => Lookup::Mirrored(n),
            _ => Lookup::Other,
        }
    }

    /// The collections route of the plan's tenant and database.
    fn collections_url(&self, api: Api) -> String {
        match api {
            Api::V2 => format!(
                "{}/api/v2/tenants/{}/databases/{}/collections",
                self.base,
                percent_encode(&self.tenant),
                percent_encode(&self.database)
            ),
            Api::V1 => format!("{}/api/v1/collections", self.base),
        }
    }

    /// `(id, name)` of the mirrored collections that exist upstream, each
    /// asked by name with the client's credentials.
    async fn mirrored_ids(
        &self,
        headers: &HeaderMap,
        api: Api,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for name in &self.mirrored {
            let url = format!("{}/{}", self.collections_url(api), percent_encode(name));
            let url = match api {
                Api::V1 => format!(
                    "{url}?tenant={}&database={}",
                    percent_encode(&self.tenant),
                    percent_encode(&self.database)
                ),
                Api::V2 => url,
            };
            match self.call::<Value>(Method::GET, url, headers, None).await {
                Ok(c) => {
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        out.push((id.to_string(), name.clone()));
                    }
                }
                // Not there (yet): a write to it cannot be ours.
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The ids a delete by filter selects now (its `ids`, `where` and
    /// `where_document` asked of the upstream's `get`, without any field).
    async fn resolve(
        &self,
        parts: &Parts,
        route: &WriteRoute,
        b: &WriteBody,
    ) -> Result<Vec<String>, String> {
        let mut query = serde_json::Map::new();
        if let Some(ids) = &b.ids {
            query.insert("ids".into(), json!(ids));
        }
        if let Some(w) = &b.where_ {
            query.insert("where".into(), w.clone());
        }
        if let Some(w) = &b.where_document {
            query.insert("where_document".into(), w.clone());
        }
        query.insert("include".into(), json!([]));
        let url = format!(
            "{}/{}/get",
            self.collections_url(route.api),
            percent_encode(&route.collection_id)
        );
        #[derive(Deserialize)]
        struct Ids {
            ids: Vec<String>,
        }
        let got: Ids = self
            .call(
                Method::POST,
                url,
                &parts.headers,
                Some(Value::Object(query)),
            )
            .await?;
        Ok(got.ids)
    }

    /// One request of the mirror's own, answered with JSON.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: String,
        headers: &HeaderMap,
        body: Option<Value>,
    ) -> Result<T, String> {
        let mut req = self
            .client
            .request(method, url)
            .headers(own_headers(headers));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| crate::source::chroma_http::describe_reqwest(&e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| crate::source::chroma_http::describe_reqwest(&e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let preview: String = text.chars().take(200).collect();
            return Err(format!("HTTP {status}: {preview}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("unexpected answer: {e}"))
    }
}

/// An answer that says the collection does not exist (404 on 1.x; 0.x
/// servers answer 400 or 500 with "does not exist").
fn is_not_found(e: &str) -> bool {
    e.starts_with("HTTP 404") || e.contains("does not exist") || e.contains("NotFound")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_found_in_both_apis() {
        let v2 = classify(
            &Method::POST,
            "/api/v2/tenants/default_tenant/databases/default_database/collections/6f1e/upsert",
        )
        .unwrap();
        assert_eq!(v2.api, Api::V2);
        assert_eq!(v2.tenant.as_deref(), Some("default_tenant"));
        assert_eq!(v2.collection_id, "6f1e");
        assert_eq!(v2.op, Op::Upsert);
        let v1 = classify(&Method::POST, "/api/v1/collections/ab%2Dcd/delete").unwrap();
        assert_eq!((v1.api, v1.collection_id.as_str()), (Api::V1, "ab-cd"));
        assert_eq!(v1.op, Op::Delete);
        // Reads, other verbs and other routes are not writes.
        for (m, p) in [
            (Method::POST, "/api/v1/collections/abc/get"),
            (Method::POST, "/api/v1/collections/abc/query"),
            (Method::GET, "/api/v1/collections/abc/add"),
            (
                Method::POST,
                "/api/v2/tenants/t/databases/d/collections/abc/count",
            ),
            (Method::POST, "/api/v2/tenants/t/databases/d/collections"),
        ] {
            assert!(classify(&m, p).is_none(), "{m} {p}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_host_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("proxy:8001"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-chroma-token", HeaderValue::from_static("secret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let f = forward_headers(&h);
        let mut names: Vec<&str> = f.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-type",
                "x-chroma-token"
            ]
        );
        let own = own_headers(&h);
        let mut names: Vec<&str> = own.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["authorization", "x-chroma-token"]);
    }

    #[test]
    fn a_delete_body_says_whether_it_selects_by_filter() {
        let by_ids: WriteBody =
            serde_json::from_str(r#"{"ids":["a"],"where":null,"where_document":null}"#).unwrap();
        assert!(!by_ids.selects_by_filter());
        let by_where: WriteBody = serde_json::from_str(r#"{"where":{"k":1}}"#).unwrap();
        assert!(by_where.selects_by_filter());
        let everything: WriteBody = serde_json::from_str(r#"{}"#).unwrap();
        assert!(everything.selects_by_filter());
        // The vectors of an add are skipped, not an error.
        let add: WriteBody = serde_json::from_str(
            r#"{"ids":["x","y"],"embeddings":[[0.5,1],[2,3]],"metadatas":[{"k":"v"},null],"documents":null}"#,
        )
        .unwrap();
        assert_eq!(add.ids.unwrap(), ["x", "y"]);
    }

    #[test]
    fn renames_and_deletes_of_collections_are_seen() {
        assert_eq!(
            collection_changed(
                &Method::DELETE,
                "/api/v2/tenants/t/databases/d/collections/docs"
            )
            .as_deref(),
            Some("docs")
        );
        assert_eq!(
            collection_changed(&Method::PUT, "/api/v1/collections/abc").as_deref(),
            Some("abc")
        );
        assert!(collection_changed(&Method::GET, "/api/v1/collections/abc").is_none());
    }

    #[test]
    fn percent_coding_round_trips() {
        assert_eq!(percent_decode("a%20b%2fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_encode("team db/ü"), "team%20db%2F%C3%BC");
        assert_eq!(percent_decode(&percent_encode("team db/ü")), "team db/ü");
    }
}
