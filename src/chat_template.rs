//! Rendering conversations with a model's Jinja chat template (minijinja, with Python string
//! methods such as `.strip()` that HF templates use), as `apply_chat_template` does; and a model's
//! [`ChatFormat`]: its template and the tokens that end a reply.

use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `messages` with `template`; with `add_generation_prompt` the text ends where the
/// assistant's reply begins.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
    let tmpl = env.get_template("chat").expect("just added");
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| Error::Tokenizer(format!("chat template failed: {e}")))
}

/// How a model's conversations become prompt ids: its chat template and the tokens that end a reply.
#[derive(Clone)]
pub struct ChatFormat {
    template: String,
    eos: String,
    pub stop_ids: Vec<u32>,
}

impl ChatFormat {
    /// The tokenizer's template, else ChatML when the vocabulary has its tokens.
    pub fn new(tok: &Tokenizer, eos_token_id: Option<u32>) -> Result<Self> {
        let template = match &tok.chat_template {
            Some(t) => t.clone(),
            None if tok.token_id(IM_START).is_some() && tok.token_id(IM_END).is_some() => CHATML_TEMPLATE.to_string(),
            None => {
                return Err(Error::Tokenizer(
                    "this model has no chat template (tokenizer_config.json 'chat_template') and no ChatML tokens; \
                     use `chatforge generate` for plain completion"
                        .into(),
                ))
            }
        };
        let mut stop_ids: Vec<u32> = [IM_END, END_OF_TEXT]
            .iter()
            .filter_map(|t| tok.token_id(t))
            .collect();
        stop_ids.extend(eos_token_id);
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let eos = tok
            .eot_id()
            .and_then(|i| tok.hf().id_to_token(i))
            .unwrap_or_default();
        Ok(ChatFormat {
            template,
            eos,
            stop_ids,
        })
    }

    /// The prompt ids for `messages`, ending where the assistant's reply starts.
    pub fn prompt_ids(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        self.ids(tok, messages, true)
    }

    /// The ids of `messages` rendered with the template.
    pub fn ids(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        tok.encode(&render(
            &self.template,
            messages,
            add_generation_prompt,
            "",
            &self.eos,
        )?)
    }
}
