//! Learning-rate schedules: linear warmup, then cosine decay, warmup-stable-decay, or constant.

use crate::config::{Schedule, TrainSection};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// Warmup, then cosine from lr down to lr * min_ratio at the last step.
    Cosine {
        lr: f64,
        warmup: usize,
        total: usize,
        min_ratio: f64,
    },
    /// Warmup, hold lr, then decay linearly to lr * min_ratio over the last `decay` steps.
    Wsd {
        lr: f64,
        warmup: usize,
        total: usize,
        decay: usize,
        min_ratio: f64,
    },
    Constant {
        lr: f64,
        warmup: usize,
    },
}

impl LrSchedule {
    pub fn from_config(t: &TrainSection, total: usize) -> Self {
        let warmup = t.warmup_steps.min(total);
        match t.schedule {
            Schedule::Wsd => LrSchedule::Wsd {
                lr: t.lr,
                warmup,
                total,
                decay: ((total as f64 * t.decay_fraction).round() as usize).min(total - warmup),
                min_ratio: t.min_lr_ratio,
            },
            Schedule::Constant => LrSchedule::Constant { lr: t.lr, warmup },
            Schedule::Cosine => LrSchedule::Cosine {
                lr: t.lr,
                warmup,
                total,
                min_ratio: t.min_lr_ratio,
            },
        }
    }

    /// The learning rate of step `step` (0-based): warmup reaches the peak at step warmup - 1.
    pub fn lr(&self, step: usize) -> f64 {
        let warm = |lr: f64, warmup: usize| {
            (step < warmup).then(|| lr * (step + 1) as f64 / warmup as f64)
        };
        match *self {
            LrSchedule::Cosine {
                lr,
                warmup,
                total,
                min_ratio,
            } => warm(lr, warmup).unwrap_or_else(|| {
                let span = (total - warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let min = lr * min_ratio;
                min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
            LrSchedule::Wsd {
                lr,
                warmup,
                total,
                decay,
                min_ratio,
            } => warm(lr, warmup).unwrap_or_else(|| {
                let decay_start = total - decay;
                if step < decay_start || decay == 0 {
                    lr
                } else {
                    let progress = ((step - decay_start + 1) as f64 / decay as f64).min(1.0);
                    lr * (1.0 - progress * (1.0 - min_ratio))
                }
            }),
            LrSchedule::Constant { lr, warmup } => warm(lr, warmup).unwrap_or(lr),
        }
    }
}
