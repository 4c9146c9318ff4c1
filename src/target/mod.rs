//! The LanceDB target: tables, versions, tags, writes and indexes.
//!
//! Everything apply and rollback do to LanceDB goes through here. Writes are
//! streamed: a commit consumes a stream of Arrow batches fed by the copy
//! step, so a commit of a million rows never holds them all in memory (a
//! Lance `add` is one new table version, whatever its size). Rollback uses
//! Lance's own versioning: a table's version before the apply is recorded
//! and tagged, and restored from there.

use arrow_array::{RecordBatch, RecordBatchIterator};
use arrow_schema::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lance::dataset::{WriteMode, WriteParams};
use lance_file::writer::FileWriterOptions;
use lancedb::DistanceType;
use lancedb::arrow::{SendableRecordBatchStream, SimpleRecordBatchStream};
use lancedb::index::Index as LanceIndex;
use lancedb::index::scalar::{
    BTreeIndexBuilder, BitmapIndexBuilder, FtsIndexBuilder, LabelListIndexBuilder,
};
use lancedb::table::AddDataMode;

use crate::plan::{DistanceSpace, Index, IndexType, Metric, Target};

/// How far a scan of a local table reads ahead of its consumer
/// ([`LanceTarget::scan`]).
pub const LOCAL_READ_AHEAD: u64 = 64 << 20;

/// About how many bytes of rows a scan batch holds ([`LanceTarget::scan`]).
pub const SCAN_BATCH_BYTES: usize = 2 << 20;

/// Rows per scan batch: [`SCAN_BATCH_BYTES`] over the width of a row of
/// `columns` (a variable-width value counted as 64 bytes), between 128
/// and Lance's default of 8,192.
fn scan_batch_rows(schema: &arrow_schema::Schema, columns: &[&str]) -> usize {
    fn width(t: &arrow_schema::DataType) -> usize {
        match t {
            arrow_schema::DataType::FixedSizeList(f, n) => {
                ((*n).max(0) as usize).saturating_mul(width(f.data_type()))
            }
            t => t.primitive_width().unwrap_or(64),
        }
    }
    let row: usize = columns
        .iter()
        .filter_map(|c| schema.field_with_name(c).ok())
        .map(|f| width(f.data_type()))
        .fold(0usize, usize::saturating_add);
    (SCAN_BATCH_BYTES / row.max(1)).clamp(128, 8192)
}

/// Small fragments (under 100,000 rows, LanceDB's own measure) a table may
/// gather from syncs before they are compacted.
pub const SMALL_FRAGMENTS_TO_COMPACT: usize = 16;

/// Rows below which a vector index is not built (PQ training needs 256).
pub const MIN_ROWS_FOR_VECTOR_INDEX: usize = 256;

/// Ids one delete commit names: a sync that removes many records deletes
/// them in few commits, each filter an `IN` list DataFusion hashes.
pub const DELETE_IDS_PER_COMMIT: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("LanceDB at `{uri}`: {action} failed: {source}\nhint: {hint}")]
    Lance {
        uri: String,
        action: String,
        hint: String,
        #[source]
        source: lancedb::Error,
    },
}

/// A SQL filter selecting rows whose `column` is one of `ids` (quotes
/// doubled, so ids holding `'`, `\`, `;` or `"` select themselves only).
pub fn id_filter(column: &str, ids: &[String]) -> String {
    let list: Vec<String> = ids
        .iter()
        .map(|id| format!("'{}'", id.replace('\'', "''")))
        .collect();
    format!("`{column}` IN ({})", list.join(","))
}

pub use crate::hash::id_hash;

/// The string values of an id column: `Utf8` or `LargeUtf8` (a table made
/// by another tool may use either), one `Option<&str>` a row.
pub fn string_values(a: &dyn arrow_array::Array) -> Option<Vec<Option<&str>>> {
    use arrow_array::cast::AsArray;
    if let Some(s) = a.as_string_opt::<i32>() {
        return Some(s.iter().collect());
    }
    a.as_string_opt::<i64>().map(|s| s.iter().collect())
}

/// A connected LanceDB database.
#[derive(Clone)]
pub struct LanceTarget {
    conn: lancedb::Connection,
    uri: String,
}

/// How a commit writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Create the table with these rows.
    Create,
    /// Replace the table's rows.
    Overwrite,
    /// Add rows.
    Append,
}

/// A table's state at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableVersion {
    pub version: u64,
    pub rows: u64,
}

pub mod vector_index;

pub use vector_index::StageProgress;

/// What happened to an index request.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOutcome {
    /// Built, of this kind (what `auto` chose, for an `auto` index).
    Built(IndexType),
    /// An existing index was brought up to date with new rows.
    Updated,
    Skipped(String),
}

/// Lance's write parameters for `mode`, with one change from its defaults:
/// the file writer keeps the arrays it is given until a page is encoded
/// instead of copying them into its own buffers first. Our batches are
/// built here, each one owned by the write, so the copy bought nothing and
/// cost a pass over every vector (about 10 % of a copy's CPU, measured in
/// docs/performance.md). Lance advises against it only for arrays that
/// arrive through the Arrow C data interface, where a small slice can keep
/// a much larger foreign buffer alive.
fn write_options(mode: WriteMode) -> lancedb::table::WriteOptions {
    let file_writer_options = FileWriterOptions {
        keep_original_array: Some(true),
        ..Default::default()
    };
    lancedb::table::WriteOptions {
        lance_write_params: Some(WriteParams {
            mode,
            file_writer_options: Some(file_writer_options),
            ..Default::default()
        }),
    }
}

impl LanceTarget {
    pub async fn connect(target: &Target) -> Result<Self, TargetError> {
        let mut builder = lancedb::connect(&target.uri);
        for (k, v) in &target.storage_options {
            builder = builder.storage_option(k, v);
        }
        let conn = builder.execute().await.map_err(|source| {
            // `check` refuses the schemes this build lacks; should one get
            // here anyway, say so rather than "invalid input".
            let hint = if source.to_string().contains("No object store provider") {
                "this build of lanceferry writes to local directories and s3:// only (LanceDB's other object-store features are not compiled in); use a local path, or a mounted bucket"
            } else if target.uri.contains("://") {
                "check that the object store answers at the endpoint (`storage_options.aws_endpoint`, or the provider's default), that the bucket exists, and the credentials (`storage_options`, or the provider's environment variables such as AWS_ACCESS_KEY_ID); nothing was written"
            } else {
                "check `target.lancedb.uri` (a directory such as `./lancedb`) and its permissions"
            };
            TargetError::Lance {
                uri: target.uri.clone(),
                action: "connecting".into(),
                hint: hint.into(),
                source,
            }
        })?;
        Ok(LanceTarget {
            conn,
            uri: target.uri.clone(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(
        &self,
        action: impl Into<String>,
        hint: impl Into<String>,
    ) -> impl FnOnce(lancedb::Error) -> TargetError {
        let uri = self.uri.clone();
        let action = action.into();
        let hint = hint.into();
        move |source| TargetError::Lance {
            uri,
            action,
            hint,
            source,
        }
    }

    pub async fn table_names(&self) -> Result<Vec<String>, TargetError> {
        self.conn.table_names().execute().await.map_err(self.err(
            "listing tables",
            "check that the target directory is a LanceDB database",
        ))
    }

    pub async fn open(&self, name: &str) -> Result<Option<lancedb::Table>, TargetError> {
        if !self.table_names().await?.iter().any(|t| t == name) {
            return Ok(None);
        }
        match self.conn.open_table(name).execute().await {
            Ok(t) => Ok(Some(t)),
            // Listed but without a committed version: a create that was
            // interrupted before its first commit. There is no table.
            Err(lancedb::Error::TableNotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(
                format!("opening table `{name}`"),
                "check the table's directory and permissions",
            )(e)),
        }
    }

    /// A table that must exist for `action` (it did a moment ago): gone now
    /// means someone dropped it meanwhile, an error, never a panic.
    async fn existing(&self, name: &str, action: &str) -> Result<lancedb::Table, TargetError> {
        self.open(name)
            .await?
            .ok_or_else(|| self.vanished(name, action))
    }

    fn vanished(&self, name: &str, action: &str) -> TargetError {
        TargetError::Lance {
            uri: self.uri.clone(),
            action: format!("{action} `{name}`"),
            hint:
                "the table disappeared meanwhile (dropped by someone else?); run the command again"
                    .into(),
            source: lancedb::Error::TableNotFound {
                name: name.to_string(),
                source: "dropped while lanceferry was using it".into(),
            },
        }
    }

    /// The version of a table that must exist (see [`Self::existing`]).
    async fn existing_version(
        &self,
        name: &str,
        action: &str,
    ) -> Result<TableVersion, TargetError> {
        self.version(name)
            .await?
            .ok_or_else(|| self.vanished(name, action))
    }

    /// Removes what an interrupted create left (files, no committed
    /// version), so the table can be created again. Only for tables this
    /// apply creates.
    pub async fn clear_partial(&self, name: &str) -> Result<(), TargetError> {
        if self.open(name).await?.is_some() || !self.table_names().await?.iter().any(|t| t == name)
        {
            return Ok(());
        }
        let _ = self.conn.drop_table(name, &[]).await;
        let local = std::path::Path::new(&self.uri).join(format!("{name}.lance"));
        if local.exists() {
            std::fs::remove_dir_all(&local).map_err(|e| TargetError::Lance {
                uri: self.uri.clone(),
                action: format!("removing the unfinished table `{name}`"),
                hint: "remove the directory by hand and re-run apply".into(),
                source: lancedb::Error::Runtime {
                    message: e.to_string(),
                },
            })?;
        }
        Ok(())
    }

    /// The table's current version and row count, if it exists.
    pub async fn version(&self, name: &str) -> Result<Option<TableVersion>, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(None);
        };
        let version = t.version().await.map_err(self.err(
            format!("reading the version of `{name}`"),
            "retry; if it persists the table may be damaged",
        ))?;
        let rows = t.count_rows(None).await.map_err(self.err(
            format!("counting rows of `{name}`"),
            "retry; if it persists the table may be damaged",
        ))?;
        Ok(Some(TableVersion {
            version,
            rows: rows as u64,
        }))
    }

    /// Commits a stream of batches as one table version; returns it.
    pub async fn commit(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: BoxStream<'static, RecordBatch>,
        how: Commit,
    ) -> Result<TableVersion, TargetError> {
        let stream: SendableRecordBatchStream = Box::pin(SimpleRecordBatchStream {
            schema: schema.clone(),
            stream: batches.map(Ok),
        });
        let action = format!("writing table `{name}`");
        let hint = "nothing of this commit was written (Lance commits are atomic); re-run `lanceferry apply` to resume from the last checkpoint";
        match how {
            Commit::Create => {
                self.conn
                    .create_table(name, stream)
                    .write_options(write_options(WriteMode::Create))
                    .execute()
                    .await
                    .map_err(self.err(action, hint))?;
            }
            Commit::Overwrite | Commit::Append => {
                let t = self.existing(name, "appending to").await?;
                let (mode, lance_mode) = if how == Commit::Overwrite {
                    (AddDataMode::Overwrite, WriteMode::Overwrite)
                } else {
                    (AddDataMode::Append, WriteMode::Append)
                };
                // Lance takes the mode from the write parameters once they
                // are given; both say the same.
                t.add(stream)
                    .mode(mode)
                    .write_options(write_options(lance_mode))
                    .execute()
                    .await
                    .map_err(self.err(action, hint))?;
            }
        }
        self.existing_version(name, "reading the version of").await
    }

    /// Inserts or updates rows matched on `key`, as one commit.
    pub async fn upsert(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        key: &str,
    ) -> Result<TableVersion, TargetError> {
        let t = self.existing(name, "upserting into").await?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let mut builder = t.merge_insert(&[key]);
        builder
            .when_matched_update_all(None)
            .when_not_matched_insert_all();
        builder.execute(Box::new(reader)).await.map_err(self.err(
            format!("upserting into `{name}`"),
            "re-run `lanceferry apply`; upserts are idempotent",
        ))?;
        self.existing_version(name, "reading the version of").await
    }

    /// The 64-bit hashes of every id in `column` at `version` (8 bytes a row).
    pub async fn id_hashes(
        &self,
        name: &str,
        column: &str,
        version: u64,
    ) -> Result<std::collections::HashSet<u64>, TargetError> {
        let mut out = std::collections::HashSet::new();
        if self.open(name).await?.is_none() {
            return Ok(out);
        }
        self.for_each_batch(name, Some(version), &[column], |b| {
            let values = string_values(b.column(0).as_ref())
                .ok_or_else(|| Box::new(self.not_string(name, column, b.column(0).data_type())))?;
            out.extend(values.into_iter().flatten().map(id_hash));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// The error for an id column that does not hold strings.
    pub fn not_string(&self, name: &str, column: &str, ty: &arrow_schema::DataType) -> TargetError {
        TargetError::Lance {
            uri: self.uri.clone(),
            action: format!("reading the id column `{column}` of `{name}`"),
            hint: format!(
                "the column holds `{ty}`, not strings; the table was not made by this plan: choose another `table:`, or `mode: replace`"
            ),
            source: lancedb::Error::InvalidInput {
                message: format!("`{column}` is `{ty}`"),
            },
        }
    }

    /// How many rows have one of `ids` in `column`, at `version`.
    pub async fn count_ids(
        &self,
        name: &str,
        column: &str,
        ids: &[String],
        version: u64,
    ) -> Result<u64, TargetError> {
        let Some(t) = self.open_at(name, version).await? else {
            return Ok(0);
        };
        let mut n = 0;
        for chunk in ids.chunks(1000) {
            n += t
                .count_rows(Some(id_filter(column, chunk)))
                .await
                .map_err(self.err(format!("counting ids in `{name}`"), "retry"))?
                as u64;
        }
        Ok(n)
    }

    /// The table as it was at `version` (read only).
    pub async fn open_at(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<lancedb::Table>, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(None);
        };
        t.checkout(version).await.map_err(self.err(
            format!("reading version {version} of `{name}`"),
            "the version may have been cleaned up (`optimize` with a short retention); re-run with a plan that does not need it",
        ))?;
        Ok(Some(t))
    }

    /// Creates an empty table with the schema (for upsert into a new table).
    pub async fn create_empty(&self, name: &str, schema: SchemaRef) -> Result<(), TargetError> {
        self.conn
            .create_empty_table(name, schema)
            .execute()
            .await
            .map_err(self.err(
                format!("creating table `{name}`"),
                "check the target's permissions",
            ))?;
        Ok(())
    }

    /// Tags a version so Lance's cleanup cannot remove it.
    pub async fn tag(&self, name: &str, tag: &str, version: u64) -> Result<(), TargetError> {
        let t = self.existing(name, "tagging").await?;
        let mut tags = t
            .tags()
            .await
            .map_err(self.err(format!("reading tags of `{name}`"), "retry"))?;
        let existing = tags
            .list()
            .await
            .map_err(self.err(format!("listing tags of `{name}`"), "retry"))?;
        if existing.contains_key(tag) {
            return Ok(());
        }
        tags.create(tag, version)
            .await
            .map_err(self.err(format!("tagging version {version} of `{name}`"), "retry"))
    }

    /// Removes the table's tags that start with `prefix` and are not in
    /// `keep`; returns their names.
    pub async fn drop_tags(
        &self,
        name: &str,
        prefix: &str,
        keep: &std::collections::HashSet<String>,
    ) -> Result<Vec<String>, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(Vec::new());
        };
        let mut tags = t
            .tags()
            .await
            .map_err(self.err(format!("reading tags of `{name}`"), "retry"))?;
        let mut old: Vec<String> = tags
            .list()
            .await
            .map_err(self.err(format!("listing tags of `{name}`"), "retry"))?
            .into_keys()
            .filter(|k| k.starts_with(prefix) && !keep.contains(k))
            .collect();
        old.sort();
        for tag in &old {
            tags.delete(tag).await.map_err(self.err(
                format!("removing tag `{tag}` of `{name}`"),
                "retry; a tag left behind only keeps old data on disk",
            ))?;
        }
        Ok(old)
    }

    /// Removes the versions older than `older_than` that no tag holds (and
    /// the files only they used); returns how many.
    pub async fn prune_versions(
        &self,
        name: &str,
        older_than: chrono::Duration,
    ) -> Result<u64, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(0);
        };
        let stats = t
            .optimize(lancedb::table::OptimizeAction::Prune {
                older_than: Some(older_than),
                // Files no manifest references may belong to a write in
                // progress: Lance's own week of grace stays.
                delete_unverified: Some(false),
                error_if_tagged_old_versions: Some(false),
            })
            .await
            .map_err(self.err(
                format!("removing old versions of `{name}`"),
                "retry; old versions only take disk space",
            ))?;
        Ok(stats.prune.map_or(0, |p| p.old_versions))
    }

    /// Makes `version` the table's latest version again (a new commit).
    pub async fn restore(&self, name: &str, version: u64) -> Result<TableVersion, TargetError> {
        let t = self.existing(name, "restoring").await?;
        t.checkout(version).await.map_err(self.err(
            format!("checking out version {version} of `{name}`"),
            "the version may have been cleaned up; list versions with LanceDB",
        ))?;
        t.restore()
            .await
            .map_err(self.err(format!("restoring `{name}` to version {version}"), "retry"))?;
        self.existing_version(name, "reading the version of").await
    }

    /// Deletes the rows whose `column` is one of `ids`, in commits of
    /// [`DELETE_IDS_PER_COMMIT`]; returns the ids each commit named.
    pub async fn delete_ids(
        &self,
        name: &str,
        column: &str,
        ids: &[String],
    ) -> Result<Vec<u64>, TargetError> {
        let t = self.existing(name, "deleting from").await?;
        let mut commits = Vec::new();
        for chunk in ids.chunks(DELETE_IDS_PER_COMMIT) {
            let filter = id_filter(column, chunk);
            t.delete(filter.as_str()).await.map_err(self.err(
                format!("deleting {} rows from `{name}`", chunk.len()),
                "re-run `lanceferry apply`; deleting by id is idempotent",
            ))?;
            commits.push(chunk.len() as u64);
        }
        Ok(commits)
    }

    /// Streams `columns` of every row of a table (its latest version).
    /// Calls `each` with every batch of `columns` of a table, at `version`
    /// or the latest; read errors become [`TargetError`]s here, once.
    pub async fn for_each_batch(
        &self,
        name: &str,
        version: Option<u64>,
        columns: &[&str],
        // (Boxed: a closure's error type is kept small.)
        mut each: impl FnMut(&RecordBatch) -> Result<(), Box<TargetError>>,
    ) -> Result<(), TargetError> {
        let mut batches = self.batches(name, version, columns).await?;
        while let Some(b) = batches.try_next().await? {
            each(&b).map_err(|e| *e)?;
        }
        Ok(())
    }

    /// The table's rows (at `version`, or the latest), `columns` only (in
    /// that order), as a stream of batches: a consumer may work on one
    /// batch while Lance decodes the next ([`LanceTarget::scan`]).
    pub async fn batches(
        &self,
        name: &str,
        version: Option<u64>,
        columns: &[&str],
    ) -> Result<BoxStream<'static, Result<RecordBatch, TargetError>>, TargetError> {
        let t = match version {
            Some(v) => self.open_at(name, v).await?,
            None => self.open(name).await?,
        }
        .ok_or_else(|| self.vanished(name, "reading"))?;
        let action = format!("reading `{name}`");
        let hint = "retry; if it persists the table may be damaged";
        let fail = |action: &String| {
            let (uri, action) = (self.uri.clone(), action.clone());
            move |source: lance::Error| TargetError::Lance {
                uri: uri.clone(),
                action: action.clone(),
                hint: hint.into(),
                source: source.into(),
            }
        };
        let ds = t
            .dataset()
            .expect("a local or object-store LanceDB table is a native table")
            .get()
            .await
            .map_err(self.err(action.clone(), hint))?;
        let stream = self.scan(&ds, None, columns).await.map_err(fail(&action))?;
        Ok(stream.map_err(fail(&action)).boxed())
    }

    /// A scan of `ds` (of `fragments` only, if given), `columns` only and
    /// in that order, whatever order Lance returns them in.
    ///
    /// Batches of about [`SCAN_BATCH_BYTES`]: Lance decodes a batch that
    /// spans pages page by page and concatenates the pieces, a second copy
    /// of every byte (a fifth of a validation's CPU at its default of 8,192
    /// rows of 1,536-dimension vectors, 50 MB a batch). Its pages hold at
    /// least 8 MiB of a column, so a batch of a quarter of that rarely
    /// spans two.
    ///
    /// On a local disk Lance reads at most [`LOCAL_READ_AHEAD`] ahead of
    /// the consumer instead of its 2 GiB default: a whole table read ahead
    /// lands in fresh memory, page-faulted in 4 KiB at a time (a tenth of
    /// a validation's CPU), and gains nothing on a disk that answers in
    /// microseconds. An object store keeps Lance's default, whose many
    /// requests in flight hide its latency.
    async fn scan(
        &self,
        ds: &lance::Dataset,
        fragments: Option<Vec<lance::table::format::Fragment>>,
        columns: &[&str],
    ) -> Result<BoxStream<'static, Result<RecordBatch, lance::Error>>, lance::Error> {
        let mut scan = ds.scan();
        if let Some(f) = fragments {
            scan.with_fragments(f);
        }
        scan.project(columns)?;
        scan.batch_size(scan_batch_rows(
            &arrow_schema::Schema::from(ds.schema()),
            columns,
        ));
        if !self.uri.contains("://") {
            scan.io_buffer_size(LOCAL_READ_AHEAD);
        }
        let stream = scan.try_into_stream().await?;
        let schema = lance::io::RecordBatchStream::schema(&stream);
        let order: Vec<usize> = columns
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<_, _>>()?;
        Ok(stream
            .map_ok(move |b| {
                b.project(&order)
                    .expect("the columns of the stream's own schema")
            })
            .boxed())
    }

    /// Reads the table at `version` split by what changed since `base`:
    /// `each(batch, true)` gets every row of the fragments written since
    /// (every column of `columns`, in that order), `each(batch, false)`
    /// the `id_col` of the rows of fragments `base` already had (same fragment, same data and overlay
    /// files: Lance never rewrites a data file, so their rows are the ones
    /// `base` held, less any deleted since). `Ok(false)` when `base` can
    /// no longer be read (its version was cleaned up): the caller falls
    /// back to reading everything.
    pub async fn scan_since(
        &self,
        name: &str,
        base: u64,
        version: u64,
        columns: &[&str],
        id_col: &str,
        mut each: impl FnMut(&RecordBatch, bool),
    ) -> Result<bool, TargetError> {
        let t = self.existing(name, "reading").await?;
        let read = |e: lance::Error| {
            self.err(
                format!("reading `{name}` at version {version}"),
                "retry; if it persists the table may be damaged",
            )(lancedb::Error::from(e))
        };
        let wrapper = t
            .dataset()
            .expect("a local or object-store LanceDB table is a native table");
        let latest = wrapper.get().await.map_err(self.err(
            format!("opening `{name}`"),
            "check the table's directory and permissions",
        ))?;
        let now = latest.checkout_version(version).await.map_err(read)?;
        let Ok(then) = latest.checkout_version(base).await else {
            return Ok(false);
        };
        // A fragment kept since `base`: the same data and overlay files,
        // and no fewer deleted rows (a restore could bring an old row
        // back into it). Anything unknown counts as written since.
        let before: std::collections::HashMap<u64, &lance::table::format::Fragment> =
            then.manifest.fragments.iter().map(|f| (f.id, f)).collect();
        let deleted = |f: &lance::table::format::Fragment| match &f.deletion_file {
            None => Some(0),
            Some(d) => d.num_deleted_rows,
        };
        let same_files = |f: &lance::table::format::Fragment| {
            before.get(&f.id).is_some_and(|b| {
                b.files == f.files
                    && b.overlays == f.overlays
                    && matches!((deleted(b), deleted(f)), (Some(x), Some(y)) if y >= x)
            })
        };
        let (old, new): (Vec<_>, Vec<_>) = now
            .manifest
            .fragments
            .iter()
            .cloned()
            .partition(|f| same_files(f));
        for (frags, cols, is_new) in [(new, columns.to_vec(), true), (old, vec![id_col], false)] {
            if frags.is_empty() {
                continue;
            }
            let mut stream = self.scan(&now, Some(frags), &cols).await.map_err(read)?;
            while let Some(b) = stream.try_next().await.map_err(read)? {
                each(&b, is_new);
            }
        }
        Ok(true)
    }

    /// Adds rows written since an index was built to every index of the
    /// table (no retraining: IVF partitions stay), as LanceDB's optimize of
    /// indices does.
    pub async fn optimize_indexes(&self, name: &str) -> Result<(), TargetError> {
        let t = self.existing(name, "updating the indexes of").await?;
        t.optimize(lancedb::table::OptimizeAction::Index(
            lancedb::table::OptimizeOptions::default(),
        ))
        .await
        .map_err(self.err(
            format!("updating the indexes of `{name}`"),
            "re-run `lanceferry apply`; the rows are written, only the index update runs again",
        ))?;
        Ok(())
    }

    /// Merges small fragments (what many small syncs leave), remapping
    /// the indexes, once at least [`SMALL_FRAGMENTS_TO_COMPACT`] have
    /// accumulated: compacting after every small sync would rewrite the
    /// whole table each time. Returns whether it compacted.
    pub async fn compact(&self, name: &str) -> Result<bool, TargetError> {
        let t = self.existing(name, "compacting").await?;
        let stats = t
            .stats()
            .await
            .map_err(self.err(format!("reading the statistics of `{name}`"), "retry"))?;
        if stats.fragment_stats.num_small_fragments < SMALL_FRAGMENTS_TO_COMPACT {
            return Ok(false);
        }
        t.optimize(lancedb::table::OptimizeAction::Compact {
            options: lancedb::table::CompactionOptions::default(),
            remap_options: None,
        })
        .await
        .map_err(self.err(
            format!("compacting `{name}`"),
            "re-run `lanceferry apply`; compaction is safe to repeat",
        ))?;
        Ok(true)
    }

    /// The distance the table's vector index on `column` was built with
    /// (LanceDB's index statistics), if it has one that says.
    pub async fn index_distance(
        &self,
        name: &str,
        column: &str,
    ) -> Result<Option<lancedb::DistanceType>, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(None);
        };
        let indexes = t
            .list_indices()
            .await
            .map_err(self.err(format!("listing indexes of `{name}`"), "retry"))?;
        for i in indexes
            .iter()
            .filter(|i| i.columns.iter().any(|c| c == column))
        {
            let stats = t.index_stats(&i.name).await.map_err(self.err(
                format!("reading the statistics of index `{}` of `{name}`", i.name),
                "retry",
            ))?;
            if let Some(d) = stats.and_then(|s| s.distance_type) {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// The kind of the table's index on `column` (LanceDB's name,
    /// `IVF_PQ`, `BTREE`, ...), if it has one.
    pub async fn index_kind(
        &self,
        name: &str,
        column: &str,
    ) -> Result<Option<String>, TargetError> {
        let Some(t) = self.open(name).await? else {
            return Ok(None);
        };
        let indexes = t
            .list_indices()
            .await
            .map_err(self.err(format!("listing indexes of `{name}`"), "retry"))?;
        Ok(indexes
            .iter()
            .find(|i| i.columns.iter().any(|c| c == column))
            .map(|i| i.index_type.to_string()))
    }

    pub async fn drop_table(&self, name: &str) -> Result<(), TargetError> {
        if self.open(name).await?.is_none() {
            return Ok(());
        }
        self.conn.drop_table(name, &[]).await.map_err(self.err(
            format!("dropping `{name}`"),
            "check the target's permissions",
        ))
    }

    /// Builds one index. A vector index on too few rows is skipped, not
    /// failed; `auto` on the vector column is resolved here, where the
    /// rows and dimension are known. `progress` follows a vector index's
    /// build stage by stage.
    pub async fn create_index(
        &self,
        name: &str,
        index: &Index,
        space: DistanceSpace,
        progress: Option<std::sync::Arc<dyn StageProgress>>,
    ) -> Result<IndexOutcome, TargetError> {
        let t = self.existing(name, "indexing").await?;
        let rows = t
            .count_rows(None)
            .await
            .map_err(self.err(format!("counting rows of `{name}`"), "retry"))?;
        let distance = match index.metric {
            Metric::Auto => match space {
                DistanceSpace::L2 => DistanceType::L2,
                DistanceSpace::Cosine => DistanceType::Cosine,
                DistanceSpace::Ip => DistanceType::Dot,
            },
            Metric::L2 => DistanceType::L2,
            Metric::Cosine => DistanceType::Cosine,
            Metric::Dot => DistanceType::Dot,
        };
        if index.kind.is_vector() && rows < MIN_ROWS_FOR_VECTOR_INDEX {
            return Ok(IndexOutcome::Skipped(format!(
                "`{name}` has {rows} rows; a `{}` index needs at least {MIN_ROWS_FOR_VECTOR_INDEX} to train (searches still work, by brute force)",
                index.kind
            )));
        }
        if index.kind.is_vector() {
            let schema = t
                .schema()
                .await
                .map_err(self.err(format!("reading the schema of `{name}`"), "retry"))?;
            let dim = vector_index::dimension(&schema, &index.column).unwrap_or(0);
            let kind = match index.kind {
                IndexType::Auto => vector_index::choose(rows as u64, dim),
                k => k,
            };
            let params = vector_index::params(kind, index, dim, distance.into());
            vector_index::build(&t, name, &index.column, &params, progress)
                .await
                .map_err(self.err(
                    format!("building a `{kind}` index on `{name}.{}`", index.column),
                    "re-run `lanceferry apply`; the copy is kept and only the index step runs again",
                ))?;
            return Ok(IndexOutcome::Built(kind));
        }
        let lance_index = match index.kind {
            IndexType::Fts => LanceIndex::FTS(FtsIndexBuilder::default()),
            IndexType::Btree => LanceIndex::BTree(BTreeIndexBuilder::default()),
            IndexType::Bitmap => LanceIndex::Bitmap(BitmapIndexBuilder::default()),
            IndexType::LabelList => LanceIndex::LabelList(LabelListIndexBuilder::default()),
            other => unreachable!("`{other}` is a vector index kind"),
        };
        t.create_index(&[index.column.as_str()], lance_index)
            .replace(true)
            .execute()
            .await
            .map_err(self.err(
                format!(
                    "building a `{}` index on `{name}.{}`",
                    index.kind, index.column
                ),
                "re-run `lanceferry apply`; the copy is kept and only the index step runs again",
            ))?;
        Ok(IndexOutcome::Built(index.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{LargeStringArray, StringArray};

    #[test]
    fn scan_batches_hold_about_two_mebibytes_of_the_columns_read() {
        use arrow_schema::{DataType, Field, Schema};
        let item = std::sync::Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Schema::new(vec![
            Field::new("vector", DataType::FixedSizeList(item, 1536), true),
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]);
        // 1,536 × 4 + 64 + 8 bytes a row.
        assert_eq!(scan_batch_rows(&schema, &["vector", "id", "n"]), 337);
        // Narrow rows: Lance's default, not a million rows a batch.
        assert_eq!(scan_batch_rows(&schema, &["n"]), 8192);
        // Only the columns read count; an unknown one counts for nothing.
        assert_eq!(scan_batch_rows(&schema, &["id", "nope"]), 8192);
        assert_eq!(scan_batch_rows(&schema, &["vector"]), 341);
    }

    #[test]
    fn an_id_filter_quotes_every_id_to_match_itself_only() {
        let ids = vec!["plain".to_string(), "o'brien".into(), "a;b\"c\\".into()];
        assert_eq!(
            id_filter("doc_id", &ids),
            "`doc_id` IN ('plain','o''brien','a;b\"c\\')"
        );
    }

    #[test]
    fn id_columns_may_be_utf8_or_large_utf8_but_nothing_else() {
        let small = StringArray::from(vec![Some("a"), None]);
        let large = LargeStringArray::from(vec![Some("b")]);
        assert_eq!(string_values(&small), Some(vec![Some("a"), None]));
        assert_eq!(string_values(&large), Some(vec![Some("b")]));
        let ints = arrow_array::Int64Array::from(vec![1]);
        assert!(string_values(&ints).is_none());
    }
}
