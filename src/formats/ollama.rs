//! An Ollama `Modelfile` for an exported GGUF file (`convert --ollama`): `FROM` the file, the
//! chat template as Ollama's Go template, `stop` at the end-of-turn tokens, and the default
//! system prompt the chat template carries. `ollama create NAME -f Modelfile` then imports it.

use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, END_OF_TEXT, IM_END, IM_START};

/// ChatML in Ollama's template language. Ollama puts the system prompt (the request's, else
/// `SYSTEM`) into `.Messages` itself.
const CHATML_GO: &str = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

/// The Modelfile text for `gguf_file` (a path relative to the Modelfile, or absolute).
pub fn modelfile(gguf_file: &str, tok: &Tokenizer) -> Result<String> {
    let mut out = format!("FROM {}\n", quote_path(gguf_file));
    let template = tok.chat_template_or_chatml();
    if let Some(t) = &template {
        if !(t.contains(IM_START) && t.contains(IM_END)) {
            return Err(Error::Config(
                "--ollama: the model's chat template is not ChatML (<|im_start|>role ... \
                 <|im_end|>), the one chatforge can translate to Ollama's template language; \
                 export without --ollama and write the Modelfile's TEMPLATE by hand"
                    .into(),
            ));
        }
        out.push_str(&format!("TEMPLATE \"\"\"{CHATML_GO}\"\"\"\n"));
        if let Some(system) = default_system_prompt(t) {
            out.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
        }
    }
    for stop in [IM_END, END_OF_TEXT] {
        if tok.token_id(stop).is_some() {
            out.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
        }
    }
    Ok(out)
}

/// The system prompt a ChatML template writes when the conversation has none (as SmolLM2's
/// does): the literal text after `<|im_start|>system` and its newline, up to `<|im_end|>`.
fn default_system_prompt(template: &str) -> Option<String> {
    let at = template.find(&format!("{IM_START}system"))? + IM_START.len() + "system".len();
    let rest = &template[at..];
    let rest = rest
        .strip_prefix("\\n")
        .or_else(|| rest.strip_prefix('\n'))?;
    let text = &rest[..rest.find(IM_END)?];
    // A template that writes the conversation's own system message has an expression here.
    if text.is_empty() || text.contains(['{', '}', '\'', '"']) {
        return None;
    }
    Some(text.replace("\\n", "\n"))
}

/// A path as Modelfile's FROM takes it: quoted when it holds a space.
fn quote_path(p: &str) -> String {
    match p.contains(char::is_whitespace) {
        true => format!("\"{p}\""),
        false => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::default_system_prompt;

    #[test]
    fn the_default_system_prompt_is_read_from_a_chatml_template() {
        let smol = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}";
        assert_eq!(
            default_system_prompt(smol).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let dynamic =
            "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}";
        assert_eq!(default_system_prompt(dynamic), None);
        let own = "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}";
        assert_eq!(default_system_prompt(own), None);
    }
}
