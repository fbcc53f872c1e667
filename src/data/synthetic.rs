//! Built-in synthetic chat tasks, so that a chat model can be fine-tuned and graded with no
//! downloads: multi-digit arithmetic, spelling a word letter by letter, counting a letter in a word.
//! Train and held-out sets come from a seed and never share a question.

use crate::chat_template::Message;
use crate::data::chat::{save_conversations, Conversation};
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;

/// Words to spell and count letters in (common English words of 3 to 12 letters).
const WORDS: &[&str] = &[
    "apple",
    "banana",
    "cherry",
    "garden",
    "window",
    "strawberry",
    "mountain",
    "river",
    "castle",
    "dragon",
    "pencil",
    "rocket",
    "planet",
    "orange",
    "yellow",
    "purple",
    "summer",
    "winter",
    "bottle",
    "candle",
    "butter",
    "letter",
    "mirror",
    "pepper",
    "rabbit",
    "school",
    "silver",
    "spring",
    "street",
    "turtle",
    "village",
    "weather",
    "blossom",
    "balloon",
    "chimney",
    "coconut",
    "cricket",
    "diamond",
    "dolphin",
    "feather",
    "giraffe",
    "harvest",
    "jasmine",
    "kitchen",
    "lantern",
    "library",
    "lobster",
    "morning",
    "octopus",
    "painter",
    "penguin",
    "pillow",
    "pumpkin",
    "rainbow",
    "sandwich",
    "science",
    "shelter",
    "teacher",
    "thunder",
    "tomato",
    "triangle",
    "umbrella",
    "vanilla",
    "volcano",
    "whisper",
    "wizard",
    "zebra",
    "anchor",
    "bridge",
    "circle",
    "desert",
    "engine",
    "forest",
    "guitar",
    "hammer",
    "island",
    "jungle",
    "kettle",
    "ladder",
    "magnet",
    "needle",
    "parrot",
    "puzzle",
    "saddle",
    "tunnel",
    "valley",
    "wallet",
    "yogurt",
    "bicycle",
    "cabbage",
    "dinosaur",
    "elephant",
    "football",
    "hospital",
    "keyboard",
    "language",
    "mushroom",
    "notebook",
    "princess",
    "sunflower",
    "tea",
    "cat",
    "dog",
    "sun",
    "map",
    "cup",
    "hat",
    "box",
    "pen",
    "key",
    "mississippi",
    "bookkeeper",
    "committee",
    "occurrence",
    "parallel",
    "possession",
    "tennessee",
    "sassafras",
    "balloonist",
    "coffee",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticTask {
    /// "What is 4821 + 907?" -> "5728"; also subtraction and multiplication.
    Arithmetic,
    /// "Spell the word \"garden\" letter by letter." -> "g-a-r-d-e-n"
    Spelling,
    /// "How many times does the letter \"r\" appear in \"strawberry\"?" -> "3"
    CountLetters,
}

pub const ALL_TASKS: [SyntheticTask; 3] = [
    SyntheticTask::Arithmetic,
    SyntheticTask::Spelling,
    SyntheticTask::CountLetters,
];

impl SyntheticTask {
    pub fn name(self) -> &'static str {
        match self {
            SyntheticTask::Arithmetic => "arithmetic",
            SyntheticTask::Spelling => "spelling",
            SyntheticTask::CountLetters => "count_letters",
        }
    }

    /// One (question, answer) pair.
    fn sample(self, rng: &mut impl Rng) -> (String, String) {
        match self {
            SyntheticTask::Arithmetic => {
                let digits = |rng: &mut dyn rand::RngCore| 10u64.pow(rng.random_range(1..=4u32));
                let (da, db) = (digits(rng), digits(rng));
                let (a, b) = (rng.random_range(0..da), rng.random_range(0..db));
                match rng.random_range(0..3) {
                    0 => (format!("What is {a} + {b}?"), (a + b).to_string()),
                    1 => (
                        format!("What is {a} - {b}?"),
                        (a as i64 - b as i64).to_string(),
                    ),
                    _ => {
                        let (a, b) = (a % 1000, b % 100);
                        (format!("What is {a} * {b}?"), (a * b).to_string())
                    }
                }
            }
            SyntheticTask::Spelling => {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                let spelled: Vec<String> = w.chars().map(String::from).collect();
                let q = match rng.random_range(0..4) {
                    0 => format!("Spell the word \"{w}\" letter by letter."),
                    1 => format!("How do you spell \"{w}\"? Separate the letters with dashes."),
                    2 => format!("Spell \"{w}\"."),
                    _ => format!("What are the letters of \"{w}\", in order?"),
                };
                (q, spelled.join("-"))
            }
            SyntheticTask::CountLetters => {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                let letters: Vec<char> = w.chars().collect();
                // Half the time a letter of the word, else any letter (often zero).
                let c = if rng.random_bool(0.5) {
                    letters[rng.random_range(0..letters.len())]
                } else {
                    (b'a' + rng.random_range(0..26u8)) as char
                };
                let n = letters.iter().filter(|&&x| x == c).count();
                (
                    format!("How many times does the letter \"{c}\" appear in \"{w}\"?"),
                    n.to_string(),
                )
            }
        }
    }
}

/// `n_train` training and `n_test` held-out conversations of `task`, deterministic in `seed`; no
/// held-out question appears in the training set (questions are drawn without repeats, so a task
/// with fewer distinct questions than asked for returns fewer training conversations).
pub fn generate(
    task: SyntheticTask,
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> (Vec<Conversation>, Vec<Conversation>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut tries = 0;
    while out.len() < n_train + n_test && tries < 100 * (n_train + n_test) + 1000 {
        tries += 1;
        let (q, a) = task.sample(&mut rng);
        if seen.insert(q.clone()) {
            out.push(Conversation {
                messages: vec![Message::new("user", &q), Message::new("assistant", &a)],
            });
        }
    }
    // The held-out set is drawn first, so that a task with few distinct questions still has one.
    let train = out.split_off(n_test.min(out.len()));
    (train, out)
}

/// The tasks named in `names` (all of them when it is empty); an error names an unknown one and
/// lists the others.
pub fn tasks_named(names: &[String]) -> Result<Vec<SyntheticTask>> {
    if let Some(bad) = names
        .iter()
        .find(|n| !ALL_TASKS.iter().any(|t| t.name() == n.as_str()))
    {
        let known: Vec<&str> = ALL_TASKS.iter().map(|t| t.name()).collect();
        return Err(Error::Config(format!(
            "unknown task '{bad}'; available: {}",
            known.join(", ")
        )));
    }
    Ok(ALL_TASKS
        .into_iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name()))
        .collect())
}

/// Writes `tasks` as chat files into `out` (new, or replaced with `force`): `train.jsonl` with
/// every task's training conversations and `test_TASK.jsonl` with each task's held-out ones.
pub fn write_task_files(
    out: &Path,
    tasks: &[SyntheticTask],
    (train, test): (usize, usize),
    seed: u64,
    force: bool,
) -> Result<()> {
    crate::fsutil::check_output(out, "--out", &[], force)?;
    crate::fsutil::write_dir_atomic(out, |dir| {
        for (t, trained, held_out) in save_task_files(dir, tasks, (train, test), seed)? {
            eprintln!(
                "{}: {trained} train, {} held out -> {}",
                t.name(),
                held_out.len(),
                out.join(format!("test_{}.jsonl", t.name())).display()
            );
        }
        Ok(())
    })
}

/// Writes `dir/train.jsonl` (every task's training conversations) and `dir/test_TASK.jsonl`
/// (each task's held-out ones); returns each task's training count and held-out set.
pub fn save_task_files(
    dir: &Path,
    tasks: &[SyntheticTask],
    (train, test): (usize, usize),
    seed: u64,
) -> Result<Vec<(SyntheticTask, usize, Vec<Conversation>)>> {
    let mut all = Vec::new();
    let mut held_out = Vec::new();
    for &t in tasks {
        let (tr, te) = generate(t, train, test, seed);
        save_conversations(&dir.join(format!("test_{}.jsonl", t.name())), &te)?;
        held_out.push((t, tr.len(), te));
        all.extend(tr);
    }
    save_conversations(&dir.join("train.jsonl"), &all)?;
    Ok(held_out)
}
