//! Log-probabilities of sampled tokens and their most likely alternatives (OpenAI's `logprobs`).

use crate::kernels::cpu::nll::logsumexp;
use crate::tokenizer::Tokenizer;

/// Log-probability of a token, with the most likely alternatives when asked for.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// log softmax(row)[id] and the `n` most likely tokens of the logits `row`.
pub fn token_logprob(tok: &Tokenizer, row: &[f32], id: u32, n: usize) -> TokenLogprob {
    let lse = logsumexp(row);
    let name = |i: u32| tok.decode(&[i]).unwrap_or_default();
    let mut top = Vec::new();
    if n > 0 {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.select_nth_unstable_by(n.min(row.len() - 1), |&a, &b| row[b].total_cmp(&row[a]));
        idx.truncate(n);
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        top = idx
            .into_iter()
            .map(|i| (name(i as u32), row[i] - lse))
            .collect();
    }
    TokenLogprob {
        token: name(id),
        logprob: row[id as usize] - lse,
        top,
    }
}
