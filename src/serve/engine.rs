//! The generation engine behind the server: one thread owns the model and decodes every active
//! request together (continuous batching). New requests are prefilled as they arrive and join the
//! batch at the next step; finished or abandoned ones leave it. Events go back on a channel per
//! request, so a slow client only fills its own queue and never holds up the others.

use crate::error::{Error, Result};
use crate::infer::logprobs::token_logprob;
pub use crate::infer::logprobs::TokenLogprob;
use crate::infer::{Decoder, FinishReason, GenerateOptions};
use crate::model::{KvCache, Transformer};
use crate::tokenizer::Tokenizer;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

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
        self.tx.send(req).map_err(|_| Error::EngineStopped)
    }
}

/// One request being decoded.
struct Seq<'t> {
    events: UnboundedSender<GenEvent>,
    decoder: Decoder<'t>,
    prompt_tokens: usize,
    logprobs: Option<usize>,
    pending: Vec<TokenLogprob>,
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
        let tokens: Vec<u32> = seqs
            .iter()
            .map(|s| {
                s.decoder
                    .last()
                    .expect("an admitted sequence has sampled a token")
            })
            .collect();
        let step = model
            .forward_step_batch(&tokens, &mut caches)
            .and_then(|l| Ok(l.to_vec2::<f32>()?));
        match step {
            Ok(rows) => {
                for (s, row) in seqs.iter_mut().zip(rows) {
                    step_seq(tok, s, &row);
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
    let mut s = Seq {
        events: r.events,
        decoder: Decoder::new(tok, &r.prompt_ids, &r.opts, model.cfg.context),
        prompt_tokens: r.prompt_ids.len(),
        logprobs: r.logprobs,
        pending: Vec::new(),
        done: false,
        _ticket: r.ticket,
    };
    if s.decoder.budget() == 0 {
        finish(&mut s);
        return;
    }
    step_seq(tok, &mut s, &row);
    if !s.done {
        seqs.push(s);
        caches.push(cache);
    }
}

/// Samples the next token of `s` from its logits row and sends what it adds.
fn step_seq(tok: &Tokenizer, s: &mut Seq, row: &[f32]) {
    let (id, piece) = match s.decoder.step(row) {
        Ok(Some(x)) => x,
        Ok(None) => return finish(s),
        Err(e) => {
            let _ = s.events.send(GenEvent::Error(e.to_string()));
            s.done = true;
            return;
        }
    };
    if let Some(n) = s.logprobs {
        s.pending.push(token_logprob(tok, row, id, n));
    }
    if !piece.is_empty() && !send_text(s, piece) {
        return;
    }
    if s.decoder.finished().is_some() {
        finish(s);
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

/// Sends the end of `s`: what the decoder held back (a budget's end), the last log-probabilities,
/// and the finish reason with the token counts.
fn finish(s: &mut Seq) {
    match s.decoder.flush() {
        Ok(rest) => {
            if (!rest.is_empty() || !s.pending.is_empty()) && !send_text(s, rest) {
                return;
            }
        }
        Err(e) => {
            let _ = s.events.send(GenEvent::Error(e.to_string()));
            s.done = true;
            return;
        }
    }
    let _ = s.events.send(GenEvent::Done {
        finish_reason: s.decoder.finished().unwrap_or(FinishReason::Length),
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.decoder.ids().len(),
    });
    s.done = true;
}
