//! Chat data in its three forms, and the loss mask: exactly the assistant's tokens.

mod common;

use chatforge::chat_template::ChatFormat;
use chatforge::data::chat::{load_conversations, tokenize_conversation, ChatFields};
use chatforge::tokenizer::Tokenizer;
use common::*;

fn tok() -> Tokenizer {
    Tokenizer::train(&[shared_data().join("tinyshakespeare.txt")], 600).unwrap()
}

/// The masked tokens decode to each assistant reply followed by ChatML's end of turn, and nothing else.
fn check_mask(
    tok: &Tokenizer,
    path: &std::path::Path,
    fields: &ChatFields,
    replies_of_first: &[&str],
) {
    let format = ChatFormat::new(tok, None).unwrap();
    let convs = load_conversations(path, fields).unwrap();
    let (ids, train) = tokenize_conversation(&format, tok, &convs[0]).unwrap();
    assert_eq!(ids.len(), train.len());
    // Split the trained tokens into runs and decode each.
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for (i, (&id, &t)) in ids.iter().zip(&train).enumerate() {
        if t {
            if i == 0 || !train[i - 1] {
                runs.push(vec![]);
            }
            runs.last_mut().unwrap().push(id);
        }
    }
    let got: Vec<String> = runs.iter().map(|r| tok.decode(r).unwrap()).collect();
    let want: Vec<String> = replies_of_first
        .iter()
        .map(|r| format!("{r}<|im_end|>\n"))
        .collect();
    assert_eq!(got, want, "{}", path.display());
    // Everything else is the prompt side: the rendered text minus the replies.
    let untrained: Vec<u32> = ids
        .iter()
        .zip(&train)
        .filter(|(_, &t)| !t)
        .map(|(&i, _)| i)
        .collect();
    let prompt_text = tok.decode(&untrained).unwrap();
    assert!(
        prompt_text.contains("<|im_start|>assistant\n")
            && !prompt_text.contains(replies_of_first[0])
    );
}

#[test]
fn masks_cover_exactly_the_assistant_tokens_in_all_three_forms() {
    let tok = tok();
    let tmp = tempfile::tempdir().unwrap();
    // OpenAI messages (JSONL), with a system prompt and two assistant turns.
    let msgs = tmp.path().join("messages.jsonl");
    let conv = serde_json::json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A humble servant."},
        {"role": "user", "content": "And thy name?"},
        {"role": "assistant", "content": "Call me chatforge."}]});
    std::fs::write(&msgs, format!("{conv}\n")).unwrap();
    check_mask(
        &tok,
        &msgs,
        &ChatFields::default(),
        &["A humble servant.", "Call me chatforge."],
    );
    // ShareGPT (a JSON list), the real FastChat file.
    check_mask(
        &tok,
        &shared_data().join("fastchat_identity_conversations.json"),
        &ChatFields::default(),
        &["I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).", "You too!"],
    );
    // Prompt/completion pairs with custom fields: GSM8K as is.
    let fields = ChatFields {
        prompt: "question".into(),
        completion: "answer".into(),
    };
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(shared_data().join("gsm8k_train.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    check_mask(
        &tok,
        &shared_data().join("gsm8k_train.jsonl"),
        &fields,
        &[first["answer"].as_str().unwrap()],
    );
    assert_eq!(
        load_conversations(&shared_data().join("gsm8k_train.jsonl"), &fields)
            .unwrap()
            .len(),
        7473
    );
}

#[test]
fn malformed_chat_data_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.jsonl");
    std::fs::write(&p, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"text\": \"plain\"}\n").unwrap();
    let e = load_conversations(&p, &ChatFields::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 2") && e.contains("--prompt-field"),
        "{e}"
    );
    std::fs::write(
        &p,
        "{\"conversations\": [{\"from\": \"narrator\", \"value\": \"x\"}]}\n",
    )
    .unwrap();
    let e = load_conversations(&p, &ChatFields::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("narrator"), "{e}");
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n",
    )
    .unwrap();
    let e = load_conversations(&p, &ChatFields::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no assistant message"), "{e}");
}

#[test]
fn a_huge_message_is_cut_before_tokenizing_and_the_row_is_unchanged() {
    use chatforge::chat_template::Message;
    use chatforge::data::chat::Conversation;
    use chatforge::data::sft::build_examples;
    let tok = tok();
    let format = ChatFormat::new(&tok, None).unwrap();
    let reply = "To be, or not to be, that is the question. ".repeat(20_000);
    let conv = |reply: &str| Conversation {
        messages: vec![
            Message::new("user", "Speak."),
            Message::new("assistant", reply),
        ],
    };
    let context = 64;
    let (rows, stats) = build_examples(&format, &tok, &[conv(&reply)], context).unwrap();
    assert_eq!(stats.truncated, 1);
    assert_eq!(rows[0].inputs.len(), context);
    // The row is what tokenizing the whole conversation gives, cut to the context.
    let (ids, _) = tokenize_conversation(&format, &tok, &conv(&reply[..5_000])).unwrap();
    assert_eq!(rows[0].inputs, ids[..context]);
}
