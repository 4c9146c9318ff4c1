//! A running Chroma server as a source, over its HTTP API.
//!
//! The API generation is found by probing, never by `/api/v2/version` (1.x
//! hard-codes "1.0.0" there): `/api/v2/heartbeat` answers on 0.5.16+ and
//! 1.x, otherwise `/api/v1/heartbeat` (0.4.x and early 0.5). Pages are sized
//! by the server's `max_batch_size` pre-flight answer when it gives one, and
//! read by offset in insertion order, three pages asked at once (the count,
//! known beforehand, tells which) and handed on in order.
//!
//! Every request is read-only and so safe to repeat: connection errors,
//! timeouts, 429 and 502/503/504 (and 500s that are not "not found") are
//! retried with exponential backoff, about half a minute in all, so a server
//! restarted in the middle of a copy is survived. The first contact retries
//! only briefly, so a server that is simply not running is reported at once.
//!
//! Offset paging cannot see a collection that is written while it is read:
//! the count is taken before and after, and a difference (or a page that
//! ends early) is an error naming both counts. Integers in metadata are
//! parsed as i64 (serde_json keeps them exact); vectors are parsed straight
//! into one flat `f32` buffer per page. `read_fields` pages the same way but
//! leaves `embeddings` out of `include` (Chroma sends vectors only when
//! asked), so the server neither loads nor sends them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::record::{MetaValue, Metadata, SourceBatch};
use super::{CollectionInfo, Source, SourceError};
use crate::plan::{Secret, TokenHeader};

/// Pages of a read asked of the server at once, handed on in order.
const PAGES_IN_FLIGHT: usize = 3;

/// Query vectors sent in one `query` request (fewer if the server's
/// `max_batch_size` says so).
const QUERIES_PER_REQUEST: usize = 100;

/// How a failed request is repeated.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// For every request once the server has answered: 10 tries over ~25 s.
    pub const STANDARD: RetryPolicy = RetryPolicy {
        attempts: 10,
        first_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(4),
    };
    /// For the first contact: a server that is not running is said at once.
    pub const PROBE: RetryPolicy = RetryPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(400),
    };

    fn delay(&self, attempt: u32) -> Duration {
        let d = self.first_delay.saturating_mul(1u32 << attempt.min(16));
        d.min(self.max_delay)
    }
}

/// Connection settings for a Chroma server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub url: String,
    pub tenant: String,
    pub database: String,
    pub token: Option<Secret>,
    pub token_header: TokenHeader,
    pub timeout: Duration,
    /// A PEM file of extra trusted certificates (a private CA).
    pub ca_cert: Option<std::path::PathBuf>,
    pub retry: RetryPolicy,
}

impl HttpOptions {
    /// Defaults for a server at `url`: default tenant and database, no token.
    pub fn new(url: impl Into<String>) -> Self {
        HttpOptions {
            url: url.into(),
            tenant: crate::plan::model::DEFAULT_TENANT.into(),
            database: crate::plan::model::DEFAULT_DATABASE.into(),
            token: None,
            token_header: TokenHeader::XChromaToken,
            timeout: Duration::from_secs(crate::plan::model::DEFAULT_TIMEOUT_SECS),
            ca_cert: None,
            retry: RetryPolicy::STANDARD,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy)]
struct Api {
    version: ApiVersion,
    max_batch_size: Option<usize>,
}

/// What a `get` asks for. The names are the same in v1 (0.4.x included,
/// which knows `uris`) and v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Include {
    /// Whole records.
    Records,
    /// The vectors alone (a 0.4 collection's dimension).
    Embeddings,
    /// Everything but the vectors (`read_fields`).
    Fields,
}

impl Include {
    fn names(self) -> Value {
        match self {
            Include::Records => json!(["embeddings", "documents", "metadatas", "uris"]),
            Include::Embeddings => json!(["embeddings"]),
            Include::Fields => json!(["documents", "metadatas", "uris"]),
        }
    }

    fn vectors(self) -> bool {
        self != Include::Fields
    }
}

/// A Chroma server.
#[derive(Clone)]
pub struct ChromaHttp {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base: Url,
    /// The URL for messages: no user info, no query.
    shown: String,
    opts: HttpOptions,
    api: OnceCell<Api>,
}

/// Why one request failed, before it is given a context.
enum Failure {
    Unreachable(String),
    /// The TLS handshake failed (an untrusted or wrong certificate): not
    /// transient, never retried.
    Tls(String),
    Status {
        status: StatusCode,
        message: String,
    },
    Body(String),
}

impl ChromaHttp {
    /// Prepares a client; nothing is sent until the first call.
    pub fn new(opts: HttpOptions) -> Result<Self, SourceError> {
        let bad_url = |reason: String| SourceError::Server {
            url: crate::plan::redact::url(&opts.url),
            what: "the URL".into(),
            status: None,
            message: reason,
            hint: "write the server's base URL, e.g. `http://127.0.0.1:8000`".into(),
        };
        let mut base = Url::parse(&opts.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad_url("not an http:// or https:// URL".into()));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        // Every message names the server by this: userinfo as `***`.
        let mut shown = base.clone();
        shown.set_query(None);
        let shown = crate::plan::redact::url(shown.as_str().trim_end_matches('/'));

        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &opts.token {
            let (name, value) = match opts.token_header {
                TokenHeader::XChromaToken => ("x-chroma-token", token.expose().to_string()),
                TokenHeader::Authorization => {
                    ("authorization", format!("Bearer {}", token.expose()))
                }
            };
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                SourceError::Server {
                    url: shown.clone(),
                    what: "the token".into(),
                    status: None,
                    message: format!(
                        "the value of `{}` cannot be sent in an HTTP header",
                        token.variable
                    ),
                    hint: "the token must be printable ASCII without line breaks".into(),
                }
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("lanceferry/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &opts.ca_cert {
            let pem = std::fs::read(ca).map_err(|source| SourceError::Io {
                path: ca.display().to_string(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SourceError::Server {
                    url: shown.clone(),
                    what: format!("the CA certificate `{}`", ca.display()),
                    status: None,
                    message: e.to_string(),
                    hint: "`ca_cert` must be a PEM file of one or more certificates".into(),
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| SourceError::Server {
            url: shown.clone(),
            what: "the HTTP client".into(),
            status: None,
            message: e.to_string(),
            hint: "check `source.chroma` settings".into(),
        })?;
        Ok(ChromaHttp {
            inner: Arc::new(Inner {
                client,
                base,
                shown,
                opts,
                api: OnceCell::new(),
            }),
        })
    }
}

impl ChromaHttp {
    /// A collection's pages, fetched on a task of their own (one page ahead
    /// of the consumer, as the channel holds two).
    fn stream(
        &self,
        collection: &str,
        batch_size: usize,
        include: Include,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let inner = self.inner.clone();
        let name = collection.to_string();
        tokio::spawn(async move {
            if let Err(e) = inner.read_into(&name, batch_size, include, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// Which API the server speaks, `v1` or `v2` (probing it if not yet done).
    pub async fn api_generation(&self) -> Result<&'static str, SourceError> {
        Ok(match self.inner.api().await?.version {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        })
    }
}

impl Inner {
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked base URL");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Sends one request with retries; the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        policy: RetryPolicy,
    ) -> Result<Vec<u8>, Failure> {
        let mut attempt = 0;
        loop {
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(b) = body {
                req = req.json(b);
            }
            let failure = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok(Vec::from(bytes)),
                        Ok(bytes) => Failure::Status {
                            status,
                            message: error_message(&bytes),
                        },
                        Err(e) => Failure::Unreachable(describe_reqwest(&e)),
                    }
                }
                Err(e) => {
                    let text = describe_reqwest(&e);
                    if is_tls_failure(&text) {
                        Failure::Tls(text)
                    } else {
                        Failure::Unreachable(text)
                    }
                }
            };
            let retryable = match &failure {
                Failure::Unreachable(_) => true,
                Failure::Status { status, message } => {
                    matches!(status.as_u16(), 429 | 502 | 503 | 504)
                        || (status.as_u16() == 500 && !is_not_found(message))
                }
                Failure::Body(_) | Failure::Tls(_) => false,
            };
            attempt += 1;
            if !retryable || attempt >= policy.attempts {
                return Err(failure);
            }
            let delay = policy.delay(attempt - 1);
            let why = match &failure {
                Failure::Unreachable(r) => r.clone(),
                Failure::Status { status, message } => format!("HTTP {status}: {message}"),
                Failure::Body(b) | Failure::Tls(b) => b.clone(),
            };
            tracing::warn!(
                "chroma server {}: {why}; retrying in {:.1} s (try {}/{})",
                self.shown,
                delay.as_secs_f64(),
                attempt + 1,
                policy.attempts
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// A request whose failure is turned into a [`SourceError`] about `what`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<T, SourceError> {
        let bytes = self
            .send(method, url, body, self.opts.retry)
            .await
            .map_err(|f| self.error(f, what))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.error(
                Failure::Body(format!("unexpected answer ({e}): {}", preview(&bytes))),
                what,
            )
        })
    }

    fn error(&self, failure: Failure, what: &str) -> SourceError {
        match failure {
            Failure::Unreachable(reason) => SourceError::Unreachable {
                url: self.shown.clone(),
                reason,
                tries: self.opts.retry.attempts,
            },
            Failure::Status { status, message }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                let (now, other) = match self.opts.token_header {
                    TokenHeader::XChromaToken => ("x-chroma-token", "authorization"),
                    TokenHeader::Authorization => ("authorization", "x-chroma-token"),
                };
                SourceError::Unauthorized {
                    url: self.shown.clone(),
                    status: status.as_u16(),
                    message,
                    hint: match &self.opts.token {
                        None => "the server wants a token: add `token: ${CHROMA_TOKEN}` to `source.chroma` and pass the value with `--var` or the environment".into(),
                        Some(t) => format!(
                            "check the value of `{}`; the token went in the `{now}` header, and servers configured for the other one refuse it: try `token_header: {other}`",
                            t.variable
                        ),
                    },
                }
            }
            Failure::Status { status, message } => SourceError::Server {
                url: self.shown.clone(),
                what: what.to_string(),
                status: Some(status.as_u16()),
                message,
                hint: "check the server's log; lanceferry retries 429 and 5xx answers, so this one did not go away".into(),
            },
            Failure::Body(message) => SourceError::Server {
                url: self.shown.clone(),
                what: what.to_string(),
                status: None,
                message,
                hint: "is this a Chroma server? check `source.chroma.url`".into(),
            },
            Failure::Tls(reason) => self.tls_error(reason),
        }
    }

    fn tls_error(&self, reason: String) -> SourceError {
        SourceError::Server {
            url: self.shown.clone(),
            what: "the TLS handshake".into(),
            status: None,
            message: reason,
            hint: "if the server's certificate comes from a private CA (or is self-signed), set `source.chroma.ca_cert` to that CA's PEM file; check that the URL's host name is the one in the certificate".into(),
        }
    }

    /// Probes the API generation, reads the pre-flight limits and checks
    /// that the tenant and database exist. Done once.
    async fn api(&self) -> Result<Api, SourceError> {
        self.api.get_or_try_init(|| self.probe()).await.copied()
    }

    async fn probe(&self) -> Result<Api, SourceError> {
        let unreachable = |reason| SourceError::Unreachable {
            url: self.shown.clone(),
            reason,
            tries: RetryPolicy::PROBE.attempts,
        };
        let heartbeat = |v: &str| self.url(&["api", v, "heartbeat"], &[]);
        let version = match self
            .send(Method::GET, heartbeat("v2"), None, RetryPolicy::PROBE)
            .await
        {
            Ok(_) => ApiVersion::V2,
            Err(Failure::Unreachable(r)) => return Err(unreachable(r)),
            Err(Failure::Tls(r)) => return Err(self.tls_error(r)),
            Err(Failure::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                match self
                    .send(Method::GET, heartbeat("v1"), None, RetryPolicy::PROBE)
                    .await
                {
                    Ok(_) => ApiVersion::V1,
                    Err(Failure::Unreachable(r)) => return Err(unreachable(r)),
                    Err(f) => return Err(self.not_chroma(f)),
                }
            }
            Err(f) => return Err(self.not_chroma(f)),
        };
        let v = match version {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        };
        let max_batch_size = match self
            .send(
                Method::GET,
                self.url(&["api", v, "pre-flight-checks"], &[]),
                None,
                self.opts.retry,
            )
            .await
        {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("max_batch_size").and_then(Value::as_u64))
                .map(|n| n.max(1) as usize),
            Err(Failure::Status { status, .. }) if status == StatusCode::NOT_FOUND => None,
            Err(f) => return Err(self.error(f, "the pre-flight check")),
        };
        let (t, db) = (self.opts.tenant.as_str(), self.opts.database.as_str());
        let url = match version {
            ApiVersion::V2 => self.url(&["api", "v2", "tenants", t, "databases", db], &[]),
            ApiVersion::V1 => self.url(&["api", "v1", "databases", db], &[("tenant", t)]),
        };
        match self.send(Method::GET, url, None, self.opts.retry).await {
            Ok(_) => {}
            Err(Failure::Status { status, message })
                if status == StatusCode::NOT_FOUND || is_not_found(&message) =>
            {
                return Err(SourceError::NoSuchDatabase {
                    source_desc: format!("the Chroma server at `{}`", self.shown),
                    tenant: t.to_string(),
                    database: db.to_string(),
                    message,
                });
            }
            Err(f) => return Err(self.error(f, "the database lookup")),
        }
        tracing::debug!(
            "chroma server {}: API {v}, max_batch_size {:?}",
            self.shown,
            max_batch_size
        );
        Ok(Api {
            version,
            max_batch_size,
        })
    }

    fn not_chroma(&self, f: Failure) -> SourceError {
        let reason = match f {
            Failure::Status { status, message } => {
                format!(
                    "`/api/v2/heartbeat` and `/api/v1/heartbeat` answered HTTP {status}: {message}"
                )
            }
            Failure::Unreachable(r) | Failure::Body(r) | Failure::Tls(r) => r,
        };
        SourceError::Server {
            url: self.shown.clone(),
            what: "the heartbeat".into(),
            status: None,
            message: reason,
            hint: "this does not look like a Chroma server; check `source.chroma.url` (the base URL, without `/api/...`)".into(),
        }
    }

    /// The URL of a route under the collections of the tenant and database.
    fn collections_url(&self, api: Api, rest: &[&str], query: &[(&str, &str)]) -> Url {
        let (t, db) = (self.opts.tenant.as_str(), self.opts.database.as_str());
        match api.version {
            ApiVersion::V2 => {
                let mut segs = vec!["api", "v2", "tenants", t, "databases", db, "collections"];
                segs.extend_from_slice(rest);
                self.url(&segs, query)
            }
            ApiVersion::V1 => {
                let mut segs = vec!["api", "v1", "collections"];
                segs.extend_from_slice(rest);
                let mut q = vec![("tenant", t), ("database", db)];
                q.extend_from_slice(query);
                self.url(&segs, &q)
            }
        }
    }

    async fn count(&self, api: Api, id: &str, name: &str) -> Result<u64, SourceError> {
        self.call(
            Method::GET,
            self.collections_url(api, &[id, "count"], &[]),
            None,
            &format!("the count of collection `{name}`"),
        )
        .await
    }

    /// Count, dimension and space of a collection object.
    async fn remote(&self, api: Api, obj: &Value) -> Result<CollectionInfo, SourceError> {
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut metadata: BTreeMap<String, MetaValue> = obj
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| MetaValue::from_json(v).map(|mv| (k.clone(), mv)))
                    .collect()
            })
            .unwrap_or_default();
        let space = super::space::resolve_space(
            &metadata,
            None,
            obj.get("schema"),
            obj.get("configuration_json"),
        );
        metadata.retain(|k, _| !k.starts_with("hnsw:"));
        let count = self.count(api, &id, &name).await?;
        let dimension = match obj.get("dimension") {
            Some(d) => d.as_u64().map(|d| d as u32),
            // 0.4 does not say: the first record's vector does.
            None if count > 0 => {
                let page = self
                    .get_page(
                        api,
                        &id,
                        &name,
                        json!({"limit": 1, "offset": 0}),
                        Include::Embeddings,
                    )
                    .await?;
                (page.dim > 0).then_some(page.dim as u32)
            }
            None => None,
        };
        Ok(CollectionInfo {
            name,
            id,
            count,
            dimension,
            space,
            metadata,
        })
    }

    async fn list(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        let api = self.api().await?;
        const PAGE: usize = 100;
        let mut objects: Vec<Value> = Vec::new();
        loop {
            let (limit, offset) = (PAGE.to_string(), objects.len().to_string());
            let page: Vec<Value> = self
                .call(
                    Method::GET,
                    self.collections_url(
                        api,
                        &[],
                        &[("limit", limit.as_str()), ("offset", offset.as_str())],
                    ),
                    None,
                    "the list of collections",
                )
                .await?;
            let n = page.len();
            objects.extend(page);
            if n < PAGE {
                break;
            }
        }
        let mut out = Vec::with_capacity(objects.len());
        for obj in &objects {
            out.push(self.remote(api, obj).await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn lookup(&self, name: &str) -> Result<(Api, CollectionInfo), SourceError> {
        let api = self.api().await?;
        let url = self.collections_url(api, &[name], &[]);
        match self.send(Method::GET, url, None, self.opts.retry).await {
            Ok(bytes) => {
                let obj: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    self.error(
                        Failure::Body(e.to_string()),
                        &format!("collection `{name}`"),
                    )
                })?;
                Ok((api, self.remote(api, &obj).await?))
            }
            // 1.x says 404, 0.6 400 "InvalidCollection", 0.4 500 "ValueError".
            Err(Failure::Status { status, message })
                if status == StatusCode::NOT_FOUND || is_not_found(&message) =>
            {
                let all = self.list().await?;
                Err(SourceError::no_such_collection(
                    name,
                    self.describe(),
                    all.iter().map(|c| c.name.as_str()),
                ))
            }
            Err(f) => Err(self.error(f, &format!("collection `{name}`"))),
        }
    }

    fn describe(&self) -> String {
        format!(
            "chroma server `{}` (tenant `{}`, database `{}`)",
            self.shown, self.opts.tenant, self.opts.database
        )
    }

    /// One `get` call; `body` carries the selection (offset/limit or ids).
    async fn get_page(
        &self,
        api: Api,
        id: &str,
        name: &str,
        mut body: Value,
        include: Include,
    ) -> Result<SourceBatch, SourceError> {
        body["include"] = include.names();
        let what = format!("reading collection `{name}`");
        let resp: GetResponse = self
            .call(
                Method::POST,
                self.collections_url(api, &[id, "get"], &[]),
                Some(&body),
                &what,
            )
            .await?;
        resp.into_batch(include.vectors())
            .map_err(|reason| SourceError::Server {
                url: self.shown.clone(),
                what,
                status: None,
                message: reason,
                hint: "the server's answer is inconsistent; check the server's log".into(),
            })
    }

    fn page_size(&self, api: Api, batch_size: usize) -> usize {
        batch_size
            .max(1)
            .min(api.max_batch_size.unwrap_or(usize::MAX))
    }

    /// Pages through a collection by offset, asking for `include`, and
    /// checks afterwards that its count did not change meanwhile.
    async fn read_into(
        &self,
        name: &str,
        batch_size: usize,
        include: Include,
        tx: &tokio::sync::mpsc::Sender<Result<SourceBatch, SourceError>>,
    ) -> Result<(), SourceError> {
        use futures::StreamExt;
        let (api, info) = self.lookup(name).await?;
        let page = self.page_size(api, batch_size);
        // The count is known, so are the pages: PAGES_IN_FLIGHT of them are
        // asked at once (the server answers them on its own threads while
        // we parse), and handed on in order. One page past the count is
        // asked too: a collection that grew is then seen to have.
        let pages = info.count.div_ceil(page as u64) + 1;
        let mut answers = futures::stream::iter(0..pages)
            .map(|k| {
                self.get_page(
                    api,
                    &info.id,
                    name,
                    json!({"limit": page, "offset": k * page as u64}),
                    include,
                )
            })
            .buffered(PAGES_IN_FLIGHT);
        let mut offset: u64 = 0;
        while let Some(batch) = answers.next().await {
            let batch = batch?;
            let n = batch.len();
            offset += n as u64;
            if n > 0 && tx.send(Ok(batch)).await.is_err() {
                return Ok(()); // the reader went away
            }
            if n < page {
                break;
            }
        }
        drop(answers);
        let after = self.count(api, &info.id, name).await?;
        if after != info.count || offset != info.count {
            return Err(SourceError::ChangedDuringRead {
                collection: name.to_string(),
                source_desc: self.describe(),
                before: info.count,
                after,
                read: offset,
            });
        }
        Ok(())
    }

    /// Chroma's own answer to vector queries (`POST …/collections/{id}/query`,
    /// the same body in v1 and v2): for each vector, the ids of its `k`
    /// nearest records, nearest first. Only `distances` is asked to be
    /// included (every version accepts it; the ids always come).
    async fn query(
        &self,
        name: &str,
        vectors: &[Vec<f32>],
        k: usize,
    ) -> Result<Vec<Vec<String>>, SourceError> {
        #[derive(Deserialize)]
        struct QueryResponse {
            ids: Vec<Vec<String>>,
        }
        let (api, info) = self.lookup(name).await?;
        let what = format!("querying collection `{name}`");
        let mut out = Vec::with_capacity(vectors.len());
        for part in vectors.chunks(self.page_size(api, QUERIES_PER_REQUEST)) {
            let body = json!({
                "query_embeddings": part,
                "n_results": k,
                "include": ["distances"],
            });
            let resp: QueryResponse = self
                .call(
                    Method::POST,
                    self.collections_url(api, &[info.id.as_str(), "query"], &[]),
                    Some(&body),
                    &what,
                )
                .await?;
            if resp.ids.len() != part.len() {
                return Err(SourceError::Server {
                    url: self.shown.clone(),
                    what: what.clone(),
                    status: None,
                    message: format!("{} queries but {} answers", part.len(), resp.ids.len()),
                    hint: "the server's answer is inconsistent; check the server's log".into(),
                });
            }
            out.extend(resp.ids);
        }
        Ok(out)
    }

    async fn get(&self, name: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let (api, info) = self.lookup(name).await?;
        let page = self.page_size(api, 1000);
        let mut out = SourceBatch::default();
        for chunk in ids.chunks(page) {
            let b = self
                .get_page(
                    api,
                    &info.id,
                    name,
                    json!({ "ids": chunk }),
                    Include::Records,
                )
                .await?;
            out.append(b);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Source for ChromaHttp {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        self.inner.list().await
    }

    async fn collection(&self, name: &str) -> Result<CollectionInfo, SourceError> {
        Ok(self.inner.lookup(name).await?.1)
    }

    fn read(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        self.stream(collection, batch_size, Include::Records)
    }

    /// The pages of [`Source::read`], with the same count check, asked
    /// without `embeddings`.
    fn read_fields(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        self.stream(collection, batch_size, Include::Fields)
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        self.inner.get(collection, ids).await
    }

    async fn query_ids(
        &self,
        collection: &str,
        vectors: &[Vec<f32>],
        k: usize,
    ) -> Result<Option<Vec<Vec<String>>>, SourceError> {
        self.inner.query(collection, vectors, k).await.map(Some)
    }
}

/// Chroma's error bodies: `{"error","message"}` (1.x, 0.6), `{"error"}`
/// (0.4), `{"detail"}` (FastAPI).
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(m) = field("message")
            .or_else(|| field("error"))
            .or_else(|| field("detail"))
        {
            return m;
        }
    }
    preview(body)
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty answer)".into();
    }
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist") || m.contains("not found") || m.contains("notfound")
}

fn is_tls_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("certificate") || t.contains("tls") || t.contains("handshake")
}

/// A client error without its URL (which the caller names, redacted).
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "the connection failed".to_string()
    };
    // The innermost cause says what happened (refused, reset, DNS, TLS).
    let mut cause: Option<&dyn Error> = e.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    if let Some(l) = last {
        text.push_str(": ");
        text.push_str(&l);
    }
    text
}

/// The body of a `get` answer. Field names and presence vary by version;
/// only what was asked for is read.
#[derive(Deserialize)]
struct GetResponse {
    ids: Vec<String>,
    #[serde(default)]
    embeddings: Option<FlatVectors>,
    #[serde(default)]
    documents: Option<Vec<Option<String>>>,
    #[serde(default)]
    uris: Option<Vec<Option<String>>>,
    #[serde(default)]
    metadatas: Option<Vec<Option<serde_json::Map<String, Value>>>>,
}

impl GetResponse {
    /// The answer as a batch. `with_vectors`: embeddings were asked for;
    /// if not, the batch has none (dimension 0), whatever the server sent.
    fn into_batch(self, with_vectors: bool) -> Result<SourceBatch, String> {
        let n = self.ids.len();
        let vectors = if with_vectors {
            let v = self.embeddings.unwrap_or_default();
            if v.rows != n {
                return Err(format!("{} ids but {} embeddings in one answer", n, v.rows));
            }
            v
        } else {
            FlatVectors::default()
        };
        let column = |c: Option<Vec<Option<String>>>, what: &str| match c {
            None => Ok(vec![None; n]),
            Some(v) if v.len() == n => Ok(v),
            Some(v) => Err(format!("{n} ids but {} {what} in one answer", v.len())),
        };
        let metadatas = match self.metadatas {
            None => vec![None; n],
            Some(m) if m.len() == n => m
                .into_iter()
                .map(|m| {
                    m.map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| MetaValue::from_json(v).map(|mv| (k.clone(), mv)))
                            .collect::<Metadata>()
                    })
                    // 1.x answers `{}` where 0.x answers null: no metadata.
                    .filter(|m| !m.is_empty())
                })
                .collect(),
            Some(m) => return Err(format!("{n} ids but {} metadatas in one answer", m.len())),
        };
        Ok(SourceBatch {
            ids: self.ids,
            documents: column(self.documents, "documents")?,
            uris: column(self.uris, "uris")?,
            metadatas,
            embeddings: vectors.data,
            dim: vectors.dim,
        })
    }
}

/// `[[f32; dim]; rows]` parsed straight into one flat buffer.
#[derive(Default)]
struct FlatVectors {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
}

impl<'de> Deserialize<'de> for FlatVectors {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, Error, SeqAccess, Visitor};
        use std::fmt;

        struct Row<'a>(&'a mut Vec<f32>);
        impl<'de> DeserializeSeed<'de> for Row<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                struct V<'a>(&'a mut Vec<f32>);
                impl<'de> Visitor<'de> for V<'_> {
                    type Value = ();
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an embedding (a list of numbers)")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                        while let Some(x) = seq.next_element::<f32>()? {
                            self.0.push(x);
                        }
                        Ok(())
                    }
                }
                d.deserialize_seq(V(self.0))
            }
        }

        struct Rows;
        impl<'de> Visitor<'de> for Rows {
            type Value = FlatVectors;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of embeddings or null")
            }
            fn visit_unit<E: Error>(self) -> Result<FlatVectors, E> {
                Ok(FlatVectors::default())
            }
            fn visit_none<E: Error>(self) -> Result<FlatVectors, E> {
                Ok(FlatVectors::default())
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<FlatVectors, D::Error> {
                d.deserialize_seq(Rows)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlatVectors, A::Error> {
                let mut out = FlatVectors::default();
                loop {
                    let before = out.data.len();
                    if seq.next_element_seed(Row(&mut out.data))?.is_none() {
                        break;
                    }
                    let len = out.data.len() - before;
                    if out.rows == 0 {
                        out.dim = len;
                        out.data.reserve(len * seq.size_hint().unwrap_or(0));
                    } else if len != out.dim {
                        return Err(A::Error::custom(format!(
                            "embedding {} has {len} values, the first one {}",
                            out.rows + 1,
                            out.dim
                        )));
                    }
                    out.rows += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_option(Rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_answer_becomes_one_flat_batch() {
        let body = br#"{"ids":["a","b"],"embeddings":[[1.5,2],[3,4.25]],
            "documents":[null,"d"],"uris":["u",null],
            "metadatas":[{},{"big":9007199254740993,"f":0.5,"l":[1,2]}],"include":[]}"#;
        let b = serde_json::from_slice::<GetResponse>(body)
            .unwrap()
            .into_batch(true)
            .unwrap();
        assert_eq!(b.dim, 2);
        assert_eq!(b.embeddings, vec![1.5, 2.0, 3.0, 4.25]);
        assert_eq!(b.documents, vec![None, Some("d".into())]);
        assert_eq!(b.metadatas[0], None);
        let m = b.metadatas[1].as_ref().unwrap();
        assert_eq!(m["big"], MetaValue::Int(9_007_199_254_740_993));
        assert_eq!(m["f"], MetaValue::Float(0.5));
    }

    #[test]
    fn ragged_or_short_answers_are_errors() {
        let ragged = br#"{"ids":["a","b"],"embeddings":[[1,2],[3]]}"#;
        assert!(serde_json::from_slice::<GetResponse>(ragged).is_err());
        let short = br#"{"ids":["a","b"],"embeddings":[[1,2]]}"#;
        let err = serde_json::from_slice::<GetResponse>(short)
            .unwrap()
            .into_batch(true)
            .unwrap_err();
        assert!(err.contains("2 ids but 1 embeddings"), "{err}");
        let none = br#"{"ids":[],"embeddings":null,"documents":[]}"#;
        let b = serde_json::from_slice::<GetResponse>(none)
            .unwrap()
            .into_batch(true)
            .unwrap();
        assert!(b.is_empty());
    }

    #[test]
    fn a_fields_answer_becomes_a_batch_without_vectors() {
        // What `read_fields` asks for: no `embeddings`, the rest as `read`.
        assert_eq!(
            Include::Fields.names(),
            json!(["documents", "metadatas", "uris"])
        );
        assert!(!Include::Fields.vectors() && Include::Records.vectors());
        // 1.x answers `"embeddings": null`, 0.4 leaves the key out; a server
        // that sends vectors anyway has them dropped.
        let bodies: [&[u8]; 3] = [
            br#"{"ids":["a","b"],"embeddings":null,"documents":["d",null],
                "uris":[null,"u"],"metadatas":[{"k":1},null],"include":["documents"]}"#,
            br#"{"ids":["a","b"],"documents":["d",null],"uris":[null,"u"],
                "metadatas":[{"k":1},null]}"#,
            br#"{"ids":["a","b"],"embeddings":[[1,2],[3,4]],"documents":["d",null],
                "uris":[null,"u"],"metadatas":[{"k":1},null]}"#,
        ];
        for body in bodies {
            let b = serde_json::from_slice::<GetResponse>(body)
                .unwrap()
                .into_batch(false)
                .unwrap();
            assert_eq!(b.ids, ["a", "b"]);
            assert_eq!(b.documents, [Some("d".to_string()), None]);
            assert_eq!(b.uris, [None, Some("u".to_string())]);
            assert_eq!(
                b.metadatas,
                [
                    Some(Metadata::from([("k".to_string(), MetaValue::Int(1))])),
                    None
                ]
            );
            assert!(b.embeddings.is_empty() && b.dim == 0 && !b.has_vectors());
        }
        // Asked for, missing vectors are still an error.
        let body = br#"{"ids":["a"],"embeddings":null}"#;
        let err = serde_json::from_slice::<GetResponse>(body)
            .unwrap()
            .into_batch(true)
            .unwrap_err();
        assert!(err.contains("1 ids but 0 embeddings"), "{err}");
    }

    #[test]
    fn chroma_error_bodies_give_their_message() {
        assert_eq!(
            error_message(
                br#"{"error":"NotFoundError","message":"Collection [x] does not exist"}"#
            ),
            "Collection [x] does not exist"
        );
        assert_eq!(
            error_message(br#"{"error":"ValueError('Collection x does not exist.')"}"#),
            "ValueError('Collection x does not exist.')"
        );
        assert_eq!(error_message(br#"{"detail":"Not Found"}"#), "Not Found");
        assert!(is_not_found(
            "Database [nope] not found. Are you sure it exists?"
        ));
        assert!(!is_not_found("internal error"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::STANDARD;
        assert_eq!(p.delay(0), Duration::from_millis(250));
        assert_eq!(p.delay(2), Duration::from_secs(1));
        assert_eq!(p.delay(9), Duration::from_secs(4));
        let total: Duration = (0..p.attempts - 1).map(|a| p.delay(a)).sum();
        assert!(total >= Duration::from_secs(20), "{total:?}");
    }
}
