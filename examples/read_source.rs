//! Reader benchmark: streams one collection through a source and discards
//! it, printing records, bytes of vectors and the rate. Used by
//! `scripts/bench.sh` for the on-disk and HTTP readers.
//!
//!   cargo run --release --example read_source -- --path DIR COLLECTION [BATCH]
//!   cargo run --release --example read_source -- --url URL COLLECTION [BATCH]

use std::time::Instant;

use futures::StreamExt;
use lanceferry::source::Source;
use lanceferry::source::chroma_dir::ChromaDir;
use lanceferry::source::chroma_http::{ChromaHttp, HttpOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, at, collection, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: read_source --path DIR|--url URL COLLECTION [BATCH]");
    };
    let batch: usize = rest.first().map(|b| b.parse()).transpose()?.unwrap_or(1000);
    let source: Box<dyn Source> = match kind.as_str() {
        "--path" => Box::new(ChromaDir::open(at)?),
        "--url" => Box::new(ChromaHttp::new(HttpOptions::new(at.clone()))?),
        _ => anyhow::bail!("the first argument is --path or --url"),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let start = Instant::now();
        let (mut records, mut vector_bytes, mut text_bytes) = (0u64, 0u64, 0u64);
        let mut stream = source.read(collection, batch);
        while let Some(b) = stream.next().await {
            let b = b?;
            records += b.len() as u64;
            vector_bytes += (b.embeddings.len() * 4) as u64;
            text_bytes += b.documents.iter().flatten().map(|d| d.len() as u64).sum::<u64>();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{records} records in {secs:.2} s: {:.0} records/s, {:.0} MB/s of vectors ({:.0} MB vectors, {:.0} MB documents)",
            records as f64 / secs,
            vector_bytes as f64 / 1e6 / secs,
            vector_bytes as f64 / 1e6,
            text_bytes as f64 / 1e6
        );
        anyhow::Ok(())
    })
}
