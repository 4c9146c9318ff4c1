//! Which distance space a Chroma collection uses.
//!
//! Chroma has recorded the space in four places over its versions, and some
//! of them disagree (0.5/0.6 configurations say `l2` for a cosine
//! collection). The rules live here once, for the on-disk reader (which sees
//! SQLite columns) and the HTTP reader (which sees the same documents as
//! JSON fields of the collection object).

use std::collections::BTreeMap;

use serde_json::Value;

use super::MetaValue;
use crate::plan::DistanceSpace;

fn parse(s: &str) -> Option<DistanceSpace> {
    match s {
        "cosine" => Some(DistanceSpace::Cosine),
        "ip" => Some(DistanceSpace::Ip),
        "l2" => Some(DistanceSpace::L2),
        _ => None,
    }
}

/// The space by the rules of `chroma-format.md`: `hnsw:space` in the
/// collection metadata wins, then the vector segment's own `hnsw:space`
/// (on disk only), then the 1.3+ schema, then the 1.0–1.2 configuration
/// (`hnsw.space`), then the 0.5/0.6 one (`hnsw_configuration.space`), then
/// Chroma's default `l2`.
pub(crate) fn resolve_space(
    collection_metadata: &BTreeMap<String, MetaValue>,
    segment_space: Option<&str>,
    schema: Option<&Value>,
    config: Option<&Value>,
) -> DistanceSpace {
    if let Some(MetaValue::Str(s)) = collection_metadata.get("hnsw:space")
        && let Some(sp) = parse(s)
    {
        return sp;
    }
    if let Some(sp) = segment_space.and_then(parse) {
        return sp;
    }
    if let Some(schema) = schema {
        let keyed = schema.pointer("/keys/#embedding/float_list/vector_index/config/space");
        let default = schema.pointer("/defaults/float_list/vector_index/config/space");
        if let Some(sp) = keyed.or(default).and_then(Value::as_str).and_then(parse) {
            return sp;
        }
    }
    if let Some(config) = config
        && let Some(sp) = [
            "/vector_index/hnsw/space",
            "/hnsw/space",
            "/hnsw_configuration/space",
        ]
        .iter()
        .find_map(|p| config.pointer(p).and_then(Value::as_str).and_then(parse))
    {
        return sp;
    }
    DistanceSpace::L2
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_wins_over_a_configuration_that_says_l2() {
        let mut meta = BTreeMap::new();
        meta.insert("hnsw:space".to_string(), MetaValue::Str("cosine".into()));
        let config = json!({"hnsw_configuration": {"space": "l2"}});
        assert_eq!(
            resolve_space(&meta, None, None, Some(&config)),
            DistanceSpace::Cosine
        );
    }

    #[test]
    fn schema_then_configuration_then_l2() {
        let none = BTreeMap::new();
        let schema = json!({"keys": {"#embedding": {"float_list": {"vector_index": {"config": {"space": "ip"}}}}}});
        let config = json!({"hnsw": {"space": "cosine"}});
        assert_eq!(
            resolve_space(&none, None, Some(&schema), Some(&config)),
            DistanceSpace::Ip
        );
        assert_eq!(
            resolve_space(&none, None, None, Some(&config)),
            DistanceSpace::Cosine
        );
        assert_eq!(resolve_space(&none, None, None, None), DistanceSpace::L2);
    }
}
