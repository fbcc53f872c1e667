//! The range of every number-valued key of a run config, checked at load: a negative epsilon, an
//! infinite learning rate or a context of a billion tokens is an error naming the key and its
//! range, not a run that fails later or silently misbehaves.

use super::RunConfig;
use crate::error::{Error, Result};
use crate::model::config::{MAX_CONTEXT, MAX_HEADS, MAX_LAYERS, MAX_WIDTH};

impl RunConfig {
    /// Every number-valued key against its range (the message names the key and the range).
    pub(super) fn check_ranges(&self) -> Result<()> {
        use Bound::*;
        let (t, e, l) = (&self.train, &self.eval, &self.lora);
        let floats = [
            ("train.lr", t.lr, Above(0.0), Upto(10.0)),
            ("train.min_lr_ratio", t.min_lr_ratio, From(0.0), Upto(1.0)),
            (
                "train.decay_fraction",
                t.decay_fraction,
                From(0.0),
                Upto(1.0),
            ),
            ("train.weight_decay", t.weight_decay, From(0.0), Upto(10.0)),
            ("train.beta1", t.beta1, From(0.0), Below(1.0)),
            ("train.beta2", t.beta2, From(0.0), Below(1.0)),
            ("train.eps", t.eps, Above(0.0), Upto(1.0)),
            ("train.grad_clip", t.grad_clip, From(0.0), Upto(1e6)),
            ("train.peak_flops", t.peak_flops, From(0.0), Upto(1e20)),
            (
                "eval.sample_temperature",
                e.sample_temperature,
                From(0.0),
                Upto(100.0),
            ),
            (
                "sft.val_fraction",
                self.sft.val_fraction,
                From(0.0),
                Below(1.0),
            ),
            ("sft.epochs", self.sft.epochs, From(0.0), Upto(1e6)),
            ("dpo.beta", self.dpo.beta, Above(0.0), Upto(1e3)),
            (
                "rl.temperature",
                self.rl.temperature,
                Above(0.0),
                Upto(100.0),
            ),
            ("rl.kl", self.rl.kl, From(0.0), Upto(1e3)),
            ("rl.clip", self.rl.clip, Above(0.0), Below(1.0)),
            ("lora.alpha", l.alpha, Above(0.0), Upto(1e6)),
            ("lora.dropout", l.dropout, From(0.0), Below(1.0)),
        ];
        for (key, v, lo, hi) in floats {
            let ok = v.is_finite() && lo.admits_from_below(v) && hi.admits_from_above(v);
            if !ok {
                return Err(Error::Config(format!(
                    "{key} = {v} is outside {}{}, {}{}",
                    lo.open_bracket(),
                    lo.value(),
                    hi.value(),
                    hi.close_bracket()
                )));
            }
        }
        let sizes = [
            ("train.context", t.context, MAX_CONTEXT),
            ("train.batch_size", t.batch_size, 1 << 20),
            ("model.n_layer", self.model.n_layer, MAX_LAYERS),
            ("model.n_head", self.model.n_head, MAX_HEADS),
            ("model.n_kv_head", self.model.n_kv_head, MAX_HEADS),
            ("model.n_embd", self.model.n_embd, MAX_WIDTH),
            (
                "model.intermediate",
                self.model.intermediate,
                16 * MAX_WIDTH,
            ),
            ("lora.rank", l.rank, 1 << 16),
            ("eval.sample_tokens", e.sample_tokens, MAX_CONTEXT),
            ("rl.group", self.rl.group, 1 << 12),
            ("rl.prompts_per_step", self.rl.prompts_per_step, 1 << 16),
            ("rl.max_new_tokens", self.rl.max_new_tokens, MAX_CONTEXT),
            ("rl.iterations", self.rl.iterations, 1 << 10),
            ("rl.eval_problems", self.rl.eval_problems, 1 << 24),
            ("rl.train_problems", self.rl.train_problems, 1 << 24),
        ];
        for (key, v, max) in sizes {
            if v > max {
                return Err(Error::Config(format!(
                    "{key} = {v} is above its largest allowed value, {max}"
                )));
            }
        }
        let least = [
            // A group of one has no reply to be compared with: its advantage is always 0.
            ("rl.group", self.rl.group, 2),
            ("rl.prompts_per_step", self.rl.prompts_per_step, 1),
            ("rl.max_new_tokens", self.rl.max_new_tokens, 1),
            ("rl.iterations", self.rl.iterations, 1),
        ];
        for (key, v, min) in least {
            if v < min {
                return Err(Error::Config(format!(
                    "{key} = {v} is below its smallest allowed value, {min}"
                )));
            }
        }
        Ok(())
    }
}

/// One end of a config value's range.
#[derive(Clone, Copy)]
enum Bound {
    /// Greater than (an open lower end).
    Above(f64),
    /// At least.
    From(f64),
    /// Less than (an open upper end).
    Below(f64),
    /// At most.
    Upto(f64),
}

impl Bound {
    fn value(self) -> f64 {
        match self {
            Bound::Above(x) | Bound::From(x) | Bound::Below(x) | Bound::Upto(x) => x,
        }
    }
    fn admits_from_below(self, v: f64) -> bool {
        match self {
            Bound::Above(x) => v > x,
            _ => v >= self.value(),
        }
    }
    fn admits_from_above(self, v: f64) -> bool {
        match self {
            Bound::Below(x) => v < x,
            _ => v <= self.value(),
        }
    }
    fn open_bracket(self) -> char {
        match self {
            Bound::Above(_) => '(',
            _ => '[',
        }
    }
    fn close_bracket(self) -> char {
        match self {
            Bound::Below(_) => ')',
            _ => ']',
        }
    }
}
