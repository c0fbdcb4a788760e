//! The model catalog (SPEC §4.1, §3.4): which models exist, which provider serves each, under
//! which upstream id, at what price. Shipped as `catalog/models.toml`; a deployment may replace or
//! extend it with its own file of the same format.

use crate::price::{LongContextTier, Price, Rates};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The catalog shipped with this build.
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../catalog/models.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Google,
}

impl Provider {
    /// The most input tokens one inline image costs on this provider's models, from their
    /// documentation (rounded up):
    /// - OpenAI: patch-based models bill up to 1,536 patches × a model multiplier (×2.46 for
    ///   `gpt-4.1-nano`: 3,779); tile-based ones at most 85 + 170 × 8 tiles = 1,445.
    /// - Anthropic: images are resized to ≤ 1.15 megapixels, ≈ 1,600 tokens (width × height / 750).
    /// - Google: 258 tokens per 768 × 768 tile of an image scaled to at most 3072 × 3072
    ///   (16 tiles: 4,128).
    pub fn image_part_tokens_max(self) -> u64 {
        match self {
            Provider::Openai => 3_800,
            Provider::Anthropic => 1_600,
            Provider::Google => 4_200,
        }
    }

    /// A 1-hour cache write's price when the catalog row does not give one: Anthropic bills
    /// every model's 1-hour writes at 2× input; the others have no such class.
    pub fn default_cache_write_1h(self, input: u64) -> u64 {
        match self {
            Provider::Anthropic => input.saturating_mul(2),
            Provider::Openai | Provider::Google => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a model does: generate text (the chat, messages, Gemini and Responses routes) or embed
/// it (`/v1/embeddings`, `:embedContent`). A model is served only on its kind's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

/// One model as Quota sells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Quota's id: bare for OpenAI (`gpt-4o-mini`), prefixed otherwise (`anthropic/claude-sonnet-4.5`).
    pub id: String,
    pub provider: Provider,
    /// The id the provider's API expects.
    pub upstream_id: String,
    pub price: Price,
    pub context_window: u64,
    pub max_output_tokens: u64,
    /// The most input tokens one inline image part can be billed for (the hold's per-part
    /// bound, SPEC §4.3(1)); the provider's documented maximum unless the row says otherwise.
    pub image_part_tokens_max: u64,
    /// When the price last changed, Unix seconds (`created` in `/v1/models`).
    pub price_changed_at: i64,
    /// Where the price was read (a URL or document), for whoever checks it next.
    pub source: String,
    /// An o-series or GPT-5-family model (SPEC §3.1b): `max_tokens` goes upstream as
    /// `max_completion_tokens`, and sampling parameters it refuses are dropped.
    pub reasoning: bool,
    pub kind: ModelKind,
    /// An embedding model's output dimension (0 for chat models).
    pub dimensions: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<ModelRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRow {
    id: String,
    provider: Provider,
    upstream_id: String,
    input: u64,
    cached_input: u64,
    #[serde(default)]
    cache_write: u64,
    cache_write_1h: Option<u64>,
    output: u64,
    context_window: u64,
    max_output_tokens: u64,
    image_part_tokens_max: Option<u64>,
    price_date: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    reasoning: bool,
    #[serde(default)]
    kind: ModelKind,
    dimensions: Option<u64>,
    long_context: Option<TierRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierRow {
    threshold_tokens: u64,
    input: u64,
    cached_input: u64,
    #[serde(default)]
    cache_write: u64,
    cache_write_1h: Option<u64>,
    output: u64,
}

/// All models, by Quota id, with the bare provider ids as aliases for the native routes.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: Vec<Arc<Model>>,
    by_id: HashMap<String, Arc<Model>>,
    by_native_id: HashMap<(Provider, String), Arc<Model>>,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::from_toml(BUILTIN_CATALOG_TOML).expect("the built-in catalog is valid (tested)")
    }

    /// Parse a catalog file. Errors name the model and the problem.
    pub fn from_toml(text: &str) -> Result<Catalog, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| format!("catalog: {e}"))?;
        let mut catalog = Catalog::default();
        for row in file.model {
            catalog.insert(row_to_model(row)?);
        }
        Ok(catalog)
    }

    /// Models from `overrides` replace same-id models here and new ones are added.
    pub fn merge(&mut self, overrides: Catalog) {
        for model in overrides.models {
            self.insert((*model).clone());
        }
    }

    fn insert(&mut self, model: Model) {
        let model = Arc::new(model);
        self.models.retain(|m| m.id != model.id);
        self.models.push(model.clone());
        // Native routes accept the bare provider id: `claude-sonnet-4.5`, `claude-sonnet-4-5`.
        let bare = model.id.rsplit('/').next().unwrap_or(&model.id).to_string();
        self.by_native_id.insert((model.provider, bare), model.clone());
        self.by_native_id.insert((model.provider, model.upstream_id.clone()), model.clone());
        self.by_id.insert(model.id.clone(), model);
    }

    /// Look up by Quota id (`gpt-4o-mini`, `anthropic/claude-sonnet-4.5`).
    pub fn get(&self, id: &str) -> Option<&Arc<Model>> {
        self.by_id.get(id)
    }

    /// Look up on a provider's native route: the Quota id, or the provider's bare id.
    pub fn get_native(&self, provider: Provider, id: &str) -> Option<&Arc<Model>> {
        self.by_id
            .get(id)
            .filter(|m| m.provider == provider)
            .or_else(|| self.by_native_id.get(&(provider, id.to_string())))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.iter()
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

fn row_to_model(row: ModelRow) -> Result<Model, String> {
    let bad = |what: &str| format!("catalog: model `{}`: {what}", row.id);
    if row.id.is_empty() || row.upstream_id.is_empty() {
        return Err(bad("id and upstream_id must not be empty"));
    }
    let prefixed = row.id.contains('/');
    let expected_prefix = format!("{}/", row.provider);
    if row.provider == Provider::Openai && prefixed && !row.id.starts_with(&expected_prefix) {
        return Err(bad("OpenAI ids are bare or `openai/…`"));
    }
    if row.provider != Provider::Openai && !row.id.starts_with(&expected_prefix) {
        return Err(bad(&format!("ids of {} models start with `{expected_prefix}`", row.provider)));
    }
    if row.context_window == 0 || row.max_output_tokens == 0 {
        return Err(bad("context_window and max_output_tokens must be positive"));
    }
    let price_changed_at = crate::calendar::parse_date(&row.price_date)
        .map(|days| days * 86_400)
        .ok_or_else(|| bad("price_date must be YYYY-MM-DD"))?;
    let dimensions = match (row.kind, row.dimensions) {
        (ModelKind::Embedding, Some(d)) if d > 0 => d,
        (ModelKind::Embedding, _) => return Err(bad("embedding models need a positive `dimensions`")),
        (ModelKind::Chat, None) => 0,
        (ModelKind::Chat, Some(_)) => return Err(bad("`dimensions` is for embedding models")),
    };
    let provider = row.provider;
    let rates = |input: u64, cached_input: u64, cache_write: u64, cache_write_1h: Option<u64>, output: u64| Rates {
        input,
        cached_input,
        cache_write,
        cache_write_1h: cache_write_1h.unwrap_or_else(|| provider.default_cache_write_1h(input)),
        output,
    };
    let base = rates(row.input, row.cached_input, row.cache_write, row.cache_write_1h, row.output);
    let long_context = row.long_context.map(|t| LongContextTier {
        threshold_tokens: t.threshold_tokens,
        rates: rates(t.input, t.cached_input, t.cache_write, t.cache_write_1h, t.output),
    });
    Ok(Model {
        id: row.id,
        provider: row.provider,
        upstream_id: row.upstream_id,
        price: Price { base, long_context },
        context_window: row.context_window,
        max_output_tokens: row.max_output_tokens,
        image_part_tokens_max: row.image_part_tokens_max.unwrap_or(row.provider.image_part_tokens_max()),
        price_changed_at,
        source: row.source,
        reasoning: row.reasoning,
        kind: row.kind,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_the_required_models_at_list_price() {
        let c = Catalog::builtin();
        for id in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "gpt-5-mini"] {
            assert!(c.get(id).is_some(), "{id} missing");
        }
        let mini = c.get("gpt-4o-mini").unwrap();
        assert_eq!(mini.price.base.input, 150_000);
        assert_eq!(mini.price.base.cached_input, 75_000);
        assert_eq!(mini.price.base.output, 600_000);
        assert_eq!(mini.context_window, 128_000);
        let sonnet = c.get("anthropic/claude-sonnet-4.5").unwrap();
        assert_eq!(sonnet.price.long_context.unwrap().rates.output, 22_500_000);
    }

    #[test]
    fn every_builtin_row_names_its_source_and_the_current_models_are_there() {
        let c = Catalog::builtin();
        for m in c.iter() {
            assert!(!m.source.is_empty(), "{} has no source", m.id);
        }
        for id in [
            "anthropic/claude-opus-4.6",
            "anthropic/claude-opus-4.5",
            "anthropic/claude-sonnet-4.6",
            "google/gemini-3-pro-preview",
            "google/gemini-3-flash-preview",
            "gpt-5.1",
            "gpt-5.2",
        ] {
            assert!(c.get(id).is_some(), "{id} missing");
        }
        let pro = c.get("google/gemini-3-pro-preview").unwrap();
        assert_eq!(pro.price.long_context.unwrap().threshold_tokens, 200_000);
        assert_eq!(pro.price.long_context.unwrap().rates.input, 4_000_000);
    }

    #[test]
    fn anthropic_one_hour_writes_cost_twice_the_input_unless_the_row_says_otherwise() {
        let c = Catalog::builtin();
        let haiku = c.get("anthropic/claude-haiku-4.5").unwrap();
        assert_eq!(haiku.price.base.cache_write_1h, 2_000_000);
        let opus = c.get("anthropic/claude-opus-4.1").unwrap();
        assert_eq!(opus.price.base.cache_write_1h, 30_000_000);
        assert_eq!(c.get("gpt-4o").unwrap().price.base.cache_write_1h, 0);
    }

    #[test]
    fn reasoning_and_embedding_models_are_marked() {
        let c = Catalog::builtin();
        for id in ["o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5.1", "gpt-5.2"] {
            assert!(c.get(id).unwrap().reasoning, "{id}");
        }
        assert!(!c.get("gpt-4o").unwrap().reasoning);
        let small = c.get("text-embedding-3-small").unwrap();
        assert_eq!((small.kind, small.dimensions), (ModelKind::Embedding, 1536));
        assert_eq!(c.get("google/gemini-embedding-001").unwrap().dimensions, 3072);
        assert_eq!(c.get("gpt-4o").unwrap().kind, ModelKind::Chat);
    }

    #[test]
    fn native_ids_resolve_per_provider() {
        let c = Catalog::builtin();
        assert_eq!(c.get_native(Provider::Anthropic, "claude-sonnet-4.5").unwrap().id, "anthropic/claude-sonnet-4.5");
        assert_eq!(c.get_native(Provider::Anthropic, "claude-sonnet-4-5").unwrap().id, "anthropic/claude-sonnet-4.5");
        assert_eq!(c.get_native(Provider::Google, "gemini-2.5-flash").unwrap().id, "google/gemini-2.5-flash");
        assert!(c.get_native(Provider::Google, "gpt-4o").is_none());
    }

    #[test]
    fn bad_rows_are_rejected_with_the_model_named() {
        let err = Catalog::from_toml(
            "[[model]]\nid='claude-x'\nprovider='anthropic'\nupstream_id='x'\ninput=1\ncached_input=1\noutput=1\ncontext_window=1\nmax_output_tokens=1\nprice_date='2025-01-01'\n",
        )
        .unwrap_err();
        assert!(err.contains("claude-x"), "{err}");
    }

    #[test]
    fn dates_convert_to_unix_seconds() {
        assert_eq!(crate::calendar::parse_date("2025-11-01").map(|d| d * 86_400), Some(1_761_955_200));
    }
}
