//! The config's named choices as types: the learning-rate schedule, the compute precision, the
//! fine-tuning objective, the preference loss and the reinforcement-learning task.
//! Each reads and writes as the string the TOML file holds, and a wrong one is an error naming the
//! key and the choices.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `train.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    /// Warmup, then cosine decay.
    #[default]
    Cosine,
    /// Warmup, stable, then linear decay.
    Wsd,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "wsd" => Ok(Schedule::Wsd),
            "constant" => Ok(Schedule::Constant),
            _ => Err(format!(
                "train.schedule '{s}': expected cosine, wsd or constant"
            )),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Schedule::Cosine => "cosine",
            Schedule::Wsd => "wsd",
            Schedule::Constant => "constant",
        })
    }
}

/// `train.dtype`: the compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and activations in the forward and backward passes; f32 master weights,
    /// gradients, optimizer state, norms and loss.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("train.dtype '{s}': expected f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// `sft.objective`: what fine-tuning learns from its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Objective {
    /// Next-token cross-entropy on the assistant's tokens of conversations.
    #[default]
    Sft,
    /// Direct preference optimisation on chosen/rejected pairs (`[dpo]`).
    Dpo,
    /// Reinforcement learning on a task with a verifier (GRPO, `[rl]`).
    Rl,
}

impl std::str::FromStr for Objective {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sft" => Ok(Objective::Sft),
            "dpo" => Ok(Objective::Dpo),
            "rl" => Ok(Objective::Rl),
            _ => Err(format!("sft.objective '{s}': expected sft, dpo or rl")),
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Objective::Sft => "sft",
            Objective::Dpo => "dpo",
            Objective::Rl => "rl",
        })
    }
}

/// `dpo.loss`: how the preference margin becomes a loss (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DpoLoss {
    /// -log sigmoid(beta * margin): DPO (Rafailov et al., 2023).
    #[default]
    Sigmoid,
    /// (margin / tokens - 1 / (2 beta))^2 on per-token log-ratios: IPO (Azar et al., 2023).
    Ipo,
}

impl std::str::FromStr for DpoLoss {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sigmoid" => Ok(DpoLoss::Sigmoid),
            "ipo" => Ok(DpoLoss::Ipo),
            _ => Err(format!("dpo.loss '{s}': expected sigmoid or ipo")),
        }
    }
}

impl fmt::Display for DpoLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
        })
    }
}

macro_rules! string_conversions {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    )*};
}

/// `rl.task`: what reinforcement learning asks the model and how its replies are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RlTask {
    /// GSM8K word problems (`question`, `answer` ending "#### N"): the reply's final number.
    #[default]
    Gsm8k,
    /// The built-in synthetic tasks (`data::synthetic`): the reply, trimmed, equals the answer.
    Arithmetic,
    Spelling,
    CountLetters,
}

impl RlTask {
    pub const NAMES: &'static str = "gsm8k, arithmetic, spelling or count_letters";
}

impl std::str::FromStr for RlTask {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gsm8k" => Ok(RlTask::Gsm8k),
            "arithmetic" => Ok(RlTask::Arithmetic),
            "spelling" => Ok(RlTask::Spelling),
            "count_letters" => Ok(RlTask::CountLetters),
            _ => Err(format!("rl.task '{s}': expected {}", RlTask::NAMES)),
        }
    }
}

impl fmt::Display for RlTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RlTask::Gsm8k => "gsm8k",
            RlTask::Arithmetic => "arithmetic",
            RlTask::Spelling => "spelling",
            RlTask::CountLetters => "count_letters",
        })
    }
}

string_conversions!(Schedule, Precision, Objective, DpoLoss, RlTask);
