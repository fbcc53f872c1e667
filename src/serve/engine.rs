//! The generation engine behind the server: one thread owns the model and decodes every active
//! request together (continuous batching). New requests are prefilled as they arrive and join the
//! batch at the next step; finished or abandoned ones leave it. Events go back on a channel per
//! request, so a slow client only fills its own queue and never holds up the others.

use crate::error::{Error, Result};
use crate::infer::stream::TextOutput;
use crate::infer::{FinishReason, GenerateOptions, Sampler};
use crate::model::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Log-probability of a token, with the most likely alternatives when asked for.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug)]
pub enum GenEvent {
    /// New text, with the log-probabilities of the tokens that produced it (when asked for).
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

pub struct GenRequest {
    pub prompt_ids: Vec<u32>,
    pub opts: GenerateOptions,
    /// Report log-probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<GenEvent>,
    /// The request's place in the server's queue, given back when the engine is done with it
    /// (finished, failed, or its client gone), not when the HTTP handler returns.
    pub ticket: super::admission::Ticket,
}

#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<GenRequest>,
}

impl Engine {
    /// Starts the engine thread; at most `max_batch` requests decode at once (the rest wait).
    pub fn start(model: Transformer, tok: Arc<Tokenizer>, max_batch: usize) -> Engine {
        let (tx, rx) = mpsc::channel::<GenRequest>();
        std::thread::Builder::new()
            .name("chatforge-engine".into())
            .spawn(move || run(&model, &tok, rx, max_batch.max(1)))
            .expect("spawn the engine thread");
        Engine { tx }
    }

    pub fn submit(&self, req: GenRequest) -> Result<()> {
        self.tx
            .send(req)
            .map_err(|_| Error::Training("the generation engine has stopped".into()))
    }
}

/// One request being decoded.
struct Seq<'t> {
    events: UnboundedSender<GenEvent>,
    sampler: Sampler,
    context: Vec<u32>,
    prompt_tokens: usize,
    generated: usize,
    max_new: usize,
    stop_ids: Vec<u32>,
    logprobs: Option<usize>,
    pending: Vec<TokenLogprob>,
    out: TextOutput<'t>,
    last: u32,
    done: bool,
    _ticket: super::admission::Ticket,
}

fn run(model: &Transformer, tok: &Tokenizer, rx: mpsc::Receiver<GenRequest>, max_batch: usize) {
    let mut seqs: Vec<Seq> = Vec::new();
    let mut caches: Vec<KvCache> = Vec::new();
    loop {
        // Idle: wait for work. Busy: take whatever has arrived, up to the batch limit.
        if seqs.is_empty() {
            match rx.recv() {
                Ok(r) => admit(model, tok, r, &mut seqs, &mut caches),
                Err(_) => return, // the server is gone
            }
        }
        while seqs.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => admit(model, tok, r, &mut seqs, &mut caches),
                Err(_) => break,
            }
        }
        retire(&mut seqs, &mut caches);
        if seqs.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = seqs.iter().map(|s| s.last).collect();
        let step = model
            .forward_step_batch(&tokens, &mut caches)
            .and_then(|l| Ok(l.to_vec2::<f32>()?));
        match step {
            Ok(rows) => {
                for (s, row) in seqs.iter_mut().zip(rows) {
                    step_seq(model, tok, s, &row);
                }
            }
            Err(e) => {
                for s in &mut seqs {
                    let _ = s.events.send(GenEvent::Error(e.to_string()));
                    s.done = true;
                }
            }
        }
        retire(&mut seqs, &mut caches);
    }
}

fn retire(seqs: &mut Vec<Seq>, caches: &mut Vec<KvCache>) {
    let mut i = 0;
    while i < seqs.len() {
        if seqs[i].done || seqs[i].events.is_closed() {
            seqs.swap_remove(i);
            caches.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

/// Prefills a new request and samples its first token.
fn admit<'t>(
    model: &Transformer,
    tok: &'t Tokenizer,
    r: GenRequest,
    seqs: &mut Vec<Seq<'t>>,
    caches: &mut Vec<KvCache>,
) {
    let cfg = &model.cfg;
    // Its client left while it waited: no prefill for nobody.
    if r.events.is_closed() {
        return;
    }
    let prefill = || -> Result<(KvCache, Vec<f32>)> {
        let (cache, logits) = model.prefill(&r.prompt_ids)?;
        Ok((cache, logits.squeeze(0)?.to_vec1::<f32>()?))
    };
    let (cache, row) = match prefill() {
        Ok(x) => x,
        Err(e) => {
            let _ = r.events.send(GenEvent::Error(e.to_string()));
            return;
        }
    };
    let max_new = r
        .opts
        .max_new_tokens
        .min(cfg.context.saturating_sub(r.prompt_ids.len()));
    let mut s = Seq {
        events: r.events,
        sampler: Sampler::new(r.opts.sampling.clone()),
        prompt_tokens: r.prompt_ids.len(),
        context: r.prompt_ids,
        generated: 0,
        max_new,
        stop_ids: r.opts.stop_ids,
        logprobs: r.logprobs,
        pending: Vec::new(),
        out: TextOutput::new(tok, r.opts.stop_strings),
        last: 0,
        done: false,
        _ticket: r.ticket,
    };
    if max_new == 0 {
        finish(&mut s, FinishReason::Length);
        return;
    }
    step_seq(model, tok, &mut s, &row);
    if !s.done {
        seqs.push(s);
        caches.push(cache);
    }
}

/// Samples the next token of `s` from its logits row and sends what it adds.
fn step_seq(model: &Transformer, tok: &Tokenizer, s: &mut Seq, row: &[f32]) {
    let id = s.sampler.sample(row, &s.context);
    if s.stop_ids.contains(&id) {
        return finish(s, FinishReason::Stop);
    }
    s.context.push(id);
    s.last = id;
    s.generated += 1;
    if let Some(n) = s.logprobs {
        s.pending.push(token_logprob(tok, row, id, n));
    }
    let (piece, stopped) = match s.out.push(id) {
        Ok(x) => x,
        Err(e) => {
            let _ = s.events.send(GenEvent::Error(e.to_string()));
            s.done = true;
            return;
        }
    };
    if !piece.is_empty() && !send_text(s, piece) {
        return;
    }
    if stopped {
        finish(s, FinishReason::Stop);
    } else if s.generated >= s.max_new || s.context.len() >= model.cfg.context {
        finish(s, FinishReason::Length);
    }
}

fn send_text(s: &mut Seq, text: String) -> bool {
    let logprobs = std::mem::take(&mut s.pending);
    if s.events.send(GenEvent::Text { text, logprobs }).is_err() {
        s.done = true; // the client went away
        return false;
    }
    true
}

fn finish(s: &mut Seq, reason: FinishReason) {
    let mut reason = reason;
    if reason == FinishReason::Length {
        if let Ok((rest, stopped)) = s.out.finish() {
            if stopped {
                reason = FinishReason::Stop;
            }
            if (!rest.is_empty() || !s.pending.is_empty()) && !send_text(s, rest) {
                return;
            }
        }
    } else if !s.pending.is_empty() {
        send_text(s, String::new());
    }
    let _ = s.events.send(GenEvent::Done {
        finish_reason: reason,
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.generated,
    });
    s.done = true;
}

/// log softmax(row)[id] and the `n` most likely tokens.
fn token_logprob(tok: &Tokenizer, row: &[f32], id: u32, n: usize) -> TokenLogprob {
    let lse = crate::kernels::cpu::nll::logsumexp(row);
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
