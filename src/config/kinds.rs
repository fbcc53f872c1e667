//! The config's named choices as types: the learning-rate schedule and the compute precision.
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

string_conversions!(Schedule, Precision);
