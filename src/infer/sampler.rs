//! Choosing the next token from logits, in the order transformers applies its logits processors:
//! repetition penalty, temperature, top-k, top-p, min-p; then a seeded draw (or argmax when greedy).

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f64,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f64,
    /// > 1 discourages tokens already in the context (1 = off), as in CTRL / transformers.
    pub repetition_penalty: f64,
    pub seed: u64,
}

/// The one set of defaults: `generate` and `chat` start from them, the server uses them for the
/// fields a request leaves out (llama.cpp's temperature and top-p).
impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// The first field outside its range, as (field, what it must be): NaN or infinite values,
    /// a temperature outside [0, 100], top_p outside (0, 1], min_p outside [0, 1], a repetition
    /// penalty outside (0, 100] (it divides the logits; past f32's range both become infinite).
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let finite = |x: f64| x.is_finite();
        if !finite(self.temperature) || !(0.0..=100.0).contains(&self.temperature) {
            return Err(("temperature", "a number in [0, 100] (0 = greedy)"));
        }
        if !finite(self.top_p) || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(("top_p", "a number in (0, 1]"));
        }
        if !finite(self.min_p) || !(0.0..=1.0).contains(&self.min_p) {
            return Err(("min_p", "a number in [0, 1]"));
        }
        if !finite(self.repetition_penalty)
            || self.repetition_penalty <= 0.0
            || self.repetition_penalty > 100.0
        {
            return Err(("repetition_penalty", "a number in (0, 100] (1 = off)"));
        }
        Ok(())
    }

    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: rand_chacha::ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token from one row of logits; `context` is every token so far (for the penalty).
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = std::borrow::Cow::Borrowed(logits);
        if p.repetition_penalty != 1.0 {
            let l = logits.to_mut();
            let mut seen = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &id in &seen {
                if let Some(x) = l.get_mut(id as usize) {
                    let r = p.repetition_penalty as f32;
                    *x = if *x > 0.0 { *x / r } else { *x * r };
                }
            }
        }
        // Below this, dividing f32 logits by the temperature overflows (1e-300 becomes 0 in f32):
        // such a temperature means "always the most likely token", which is greedy decoding.
        const GREEDY_BELOW: f64 = 1e-5;
        if p.temperature.is_nan() || p.temperature < GREEDY_BELOW || p.top_k == 1 {
            return argmax(&logits);
        }
        let t = p.temperature as f32;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if p.top_k > 0 {
            idx.truncate(p.top_k);
        }
        let max = logits[idx[0]];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| (((logits[i] - max) / t) as f64).exp())
            .collect();
        normalize(&mut probs);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|q| {
                    acc += q;
                    acc >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            idx.truncate(keep);
            normalize(&mut probs);
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
            idx.truncate(keep);
            normalize(&mut probs);
        }
        let mut u: f64 = self.rng.random();
        for (q, &i) in probs.iter().zip(&idx) {
            if u < *q {
                return i as u32;
            }
            u -= q;
        }
        *idx.last().expect("at least one token") as u32
    }
}

fn normalize(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
}

pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
            if v > b.1 {
                (i, v)
            } else {
                b
            }
        })
        .0 as u32
}
