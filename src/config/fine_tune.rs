//! The config's fine-tuning sections: `[sft]` (the data and how it is read), `[dpo]` (preference
//! tuning) and `[lora]` (adapters instead of every weight).

use super::{DpoLoss, Objective, RlTask};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Supervised fine-tuning on chat data (`chatforge sft`); unused by pre-training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSection {
    /// Chat files (.jsonl or .json): OpenAI messages, ShareGPT conversations or prompt/completion.
    pub data: Vec<PathBuf>,
    /// Field names of prompt/completion records.
    pub prompt_field: String,
    pub completion_field: String,
    /// Fraction of the conversations held out for validation.
    pub val_fraction: f64,
    /// Passes over the training conversations (when train.max_steps is 0).
    pub epochs: f64,
    /// Replace every occurrence of a word in the data, `FROM=TO;FROM2=TO2` (e.g. renaming the
    /// assistant of an identity dataset: `Vicuna=chatforge`).
    pub replace: String,
    /// "sft" (conversations, cross-entropy), "dpo" (preference pairs, `[dpo]`) or "rl" (a task
    /// with a verifier, `[rl]`).
    pub objective: Objective,
}

/// Preference tuning (`chatforge dpo`, `sft.objective = "dpo"`); its pairs are `sft.data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoSection {
    /// How far the policy may move from the reference (TRL's beta).
    pub beta: f64,
    /// "sigmoid" (DPO) or "ipo".
    pub loss: DpoLoss,
    /// The reference model (a path or Hub name); empty = the model the run starts from (with
    /// LoRA: the frozen base, adapters off).
    pub ref_model: String,
}

impl Default for DpoSection {
    fn default() -> Self {
        DpoSection {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
            ref_model: String::new(),
        }
    }
}

/// Reinforcement learning with verifiable rewards (`chatforge rl`, `sft.objective = "rl"`): GRPO.
/// Its problems are `sft.data` (GSM8K) or generated (the synthetic tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlSection {
    pub task: RlTask,
    /// Replies sampled per prompt; their rewards are compared within the group.
    pub group: usize,
    /// Prompts per optimizer step (each rank's share on `world` ranks).
    pub prompts_per_step: usize,
    /// The longest reply sampled, in tokens.
    pub max_new_tokens: usize,
    /// The sampling temperature of the replies.
    pub temperature: f64,
    /// Weight of the KL penalty to the reference (TRL's beta; 0 = none, no reference kept).
    pub kl: f64,
    /// PPO's clipping range of the probability ratio (TRL's epsilon).
    pub clip: f64,
    /// Optimizer steps on each batch of sampled replies (TRL's num_iterations): above 1 the
    /// batch is reused and the clipping acts.
    pub iterations: usize,
    /// Held-out problems for pass@1 (greedy) at every validation.
    pub eval_problems: usize,
    /// Training problems the synthetic tasks generate.
    pub train_problems: usize,
}

impl Default for RlSection {
    fn default() -> Self {
        RlSection {
            task: RlTask::Gsm8k,
            group: 8,
            prompts_per_step: 8,
            max_new_tokens: 256,
            temperature: 1.0,
            kl: 0.0,
            clip: 0.2,
            iterations: 1,
            eval_problems: 200,
            train_problems: 5000,
        }
    }
}

/// LoRA adapters instead of training every weight (rank 0 = full fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names (q_proj, v_proj, c_attn, ...) or all-linear.
    pub targets: Vec<String>,
    pub dropout: f64,
    /// Also write the merged full model (OUT/model) next to the adapter (OUT/adapter).
    pub merge: bool,
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            data: vec![],
            prompt_field: "prompt".into(),
            completion_field: "completion".into(),
            val_fraction: 0.05,
            epochs: 1.0,
            replace: String::new(),
            objective: Objective::Sft,
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            rank: 0,
            alpha: 16.0,
            targets: vec!["all-linear".into()],
            dropout: 0.0,
            merge: false,
        }
    }
}
