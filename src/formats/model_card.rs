//! Model cards: the `README.md` of every model and adapter directory chatforge writes. Its YAML
//! front matter is what the Hugging Face Hub reads (licence, library, tags, base model, datasets,
//! and a `model-index` with the run's evaluation results); below it, a short summary for people.

use crate::error::Result;
use crate::model::config::{Family, ModelConfig};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

pub const MODEL_CARD: &str = "README.md";

/// The library that opens the directory (`library_name` on the Hub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Library {
    /// A full model: `AutoModelForCausalLM.from_pretrained(DIR)`.
    Transformers,
    /// A LoRA adapter: `AutoPeftModelForCausalLM.from_pretrained(DIR)`.
    Peft,
}

/// One number of the model-index: a metric on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardResult {
    /// The dataset's Hub id, or what the data is when it has none (a file name).
    pub dataset: String,
    /// A name for people (e.g. "held-out 5% of chat.jsonl").
    pub dataset_name: String,
    /// The metric's id (loss, bits_per_byte, accuracy, exact_match, ...).
    pub metric: String,
    pub metric_name: String,
    pub value: f64,
}

/// What a model card says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCard {
    /// The model's name (the run directory's, or the output's).
    pub name: String,
    pub library: Library,
    /// An SPDX id the Hub knows (apache-2.0, mit, ...); unknown = `other`.
    pub license: Option<String>,
    /// The Hub id of the model this one was fine-tuned or converted from.
    pub base_model: Option<String>,
    /// How the model came to be, one sentence ("Pre-trained from scratch ...").
    pub origin: String,
    /// Hub ids of the training data.
    pub datasets: Vec<String>,
    /// The training data as given (paths), for the summary.
    pub data: Vec<String>,
    pub tags: Vec<String>,
    pub architecture: String,
    pub params: usize,
    pub context: usize,
    pub steps: Option<usize>,
    pub tokens_seen: Option<u64>,
    pub final_loss: Option<f64>,
    pub results: Vec<CardResult>,
    pub samples: Vec<String>,
}

impl ModelCard {
    /// A card for `cfg` with nothing known about its training yet.
    pub fn new(name: &str, cfg: &ModelConfig, library: Library, origin: &str) -> Self {
        ModelCard {
            name: name.to_string(),
            library,
            license: None,
            base_model: None,
            origin: origin.to_string(),
            datasets: Vec::new(),
            data: Vec::new(),
            tags: vec!["chatforge".into()],
            architecture: architecture(cfg),
            params: cfg.num_params(),
            context: cfg.context,
            steps: None,
            tokens_seen: None,
            final_loss: None,
            results: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// The same card for another library (the adapter of a run whose merged model has the card).
    pub fn for_library(&self, library: Library) -> Self {
        let mut c = self.clone();
        c.library = library;
        if library == Library::Peft && !c.tags.iter().any(|t| t == "lora") {
            c.tags.push("lora".into());
        }
        c
    }

    /// The README.md text: front matter, then the summary.
    pub fn render(&self) -> String {
        let mut o = String::from("---\n");
        let license = self.license.as_deref().unwrap_or("other");
        let _ = writeln!(o, "license: {}", quoted(license));
        let library = match self.library {
            Library::Transformers => "transformers",
            Library::Peft => "peft",
        };
        let _ = writeln!(o, "library_name: {library}\npipeline_tag: text-generation");
        list(&mut o, "tags", &self.tags);
        if let Some(b) = &self.base_model {
            let _ = writeln!(o, "base_model: {}", quoted(b));
        }
        list(&mut o, "datasets", &self.datasets);
        self.model_index(&mut o);
        o.push_str("---\n\n");
        self.summary(&mut o);
        o
    }

    fn model_index(&self, o: &mut String) {
        if self.results.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "model-index:\n- name: {}\n  results:",
            quoted(&self.name)
        );
        // One result per dataset, with all of its metrics.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for r in &self.results {
            let key = (r.dataset.as_str(), r.dataset_name.as_str());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let _ = writeln!(
                o,
                "  - task:\n      type: text-generation\n    dataset:\n      type: {}\n      name: {}\n    metrics:",
                quoted(key.0),
                quoted(key.1)
            );
            for m in self
                .results
                .iter()
                .filter(|m| (m.dataset.as_str(), m.dataset_name.as_str()) == key)
            {
                let _ = writeln!(
                    o,
                    "    - type: {}\n      value: {}\n      name: {}",
                    quoted(&m.metric),
                    number(m.value),
                    quoted(&m.metric_name)
                );
            }
        }
    }

    fn summary(&self, o: &mut String) {
        let _ = writeln!(o, "# {}\n\n{}\n", self.name, self.origin);
        let _ = writeln!(o, "- Architecture: {}", self.architecture);
        let _ = writeln!(
            o,
            "- Parameters: {} ({:.1} M); context {} tokens",
            self.params,
            self.params as f64 / 1e6,
            self.context
        );
        if let (Some(s), Some(t)) = (self.steps, self.tokens_seen) {
            let _ = writeln!(o, "- Training: {s} optimizer steps, {t} tokens seen");
        }
        if let Some(l) = self.final_loss {
            let _ = writeln!(o, "- Final training loss: {l:.4}");
        }
        if !self.data.is_empty() {
            let _ = writeln!(o, "- Data: {}", self.data.join(", "));
        }
        if self.license.is_none() {
            let _ = writeln!(
                o,
                "- Licence: not set. Choose one before sharing (`--set model.license=apache-2.0`, or edit `license:` above)."
            );
        }
        if !self.results.is_empty() {
            o.push_str("\n## Results\n\n| data | metric | value |\n| --- | --- | --- |\n");
            for r in &self.results {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} |",
                    r.dataset_name,
                    r.metric_name,
                    number(r.value)
                );
            }
        }
        if !self.samples.is_empty() {
            o.push_str("\n## Samples\n");
            for s in &self.samples {
                let _ = writeln!(o, "\n```text\n{}\n```", s.replace("```", "'''"));
            }
        }
        o.push_str("\n## Use\n\n");
        let _ = match self.library {
            Library::Transformers => writeln!(
                o,
                "```sh\nchatforge chat --model DIR\n```\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"DIR\")\ntokenizer = AutoTokenizer.from_pretrained(\"DIR\")\n```"
            ),
            Library::Peft => writeln!(
                o,
                "```sh\nchatforge chat --model DIR\n```\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"DIR\")\n```"
            ),
        };
        o.push_str("\nMade with [chatforge](https://github.com/chatforge/chatforge).\n");
    }
}

/// One line naming the architecture.
fn architecture(cfg: &ModelConfig) -> String {
    let family = match cfg.family {
        Family::Gpt2 => "GPT-2",
        Family::Llama => "Llama",
    };
    let kv = if cfg.n_kv_head != cfg.n_head {
        format!(" ({} key/value heads)", cfg.n_kv_head)
    } else {
        String::new()
    };
    format!(
        "{family}, {} layers, width {}, {} heads{kv}, vocabulary {}",
        cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size
    )
}

/// A YAML double-quoted scalar: JSON's string syntax, with the characters YAML does not allow
/// raw (DEL, the C1 controls) or reads as line breaks (NEL, U+2028, U+2029) escaped too.
fn quoted(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string serializes");
    json.chars()
        .map(|c| match c {
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// A number YAML reads as one: finite, else `.nan` / `.inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        ".nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        format!("{v}")
    }
}

fn list(o: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(o, "{key}:");
    for i in items {
        let _ = writeln!(o, "- {}", quoted(i));
    }
}

/// Writes `card` as `dir/README.md` (atomically).
pub fn write_card(dir: &Path, card: &ModelCard) -> Result<()> {
    crate::fsutil::write_atomic(&dir.join(MODEL_CARD), card.render().as_bytes())
}

/// The `license:` of a model directory's card, if it has one (a fine-tune inherits its base's).
pub fn card_license(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MODEL_CARD)).ok()?;
    let front = text.strip_prefix("---\n")?.split("\n---").next()?;
    front.lines().find_map(|l| {
        let v = l.strip_prefix("license:")?.trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty() && v != "other").then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn scalars_are_quoted_as_yaml_reads_them() {
        assert_eq!(quoted("a \"b\"\n"), r#""a \"b\"\n""#);
        assert_eq!(
            quoted("x\u{85}y\u{2028}\u{7f}"),
            r#""x\u0085y\u2028\u007f""#
        );
        assert_eq!(quoted("héllo 🙂"), "\"héllo 🙂\"");
    }
}
