//! The built-in synthetic tasks: deterministic, disjoint splits, correct answers.

use chatforge::data::synthetic::{generate, SyntheticTask, ALL_TASKS};

fn qa(c: &chatforge::data::chat::Conversation) -> (&str, &str) {
    (&c.messages[0].content, &c.messages[1].content)
}

#[test]
fn splits_are_deterministic_and_disjoint() {
    for task in ALL_TASKS {
        let (train, test) = generate(task, 300, 50, 7);
        assert_eq!(train.len(), 300, "{}", task.name());
        assert_eq!(test.len(), 50);
        assert_eq!(generate(task, 300, 50, 7), (train.clone(), test.clone()));
        assert_ne!(generate(task, 300, 50, 8).0, train);
        let questions: std::collections::HashSet<&str> = train.iter().map(|c| qa(c).0).collect();
        assert!(
            test.iter().all(|c| !questions.contains(qa(c).0)),
            "{}: a held-out question is in the training set",
            task.name()
        );
    }
}

#[test]
fn answers_are_right() {
    let (items, _) = generate(SyntheticTask::Arithmetic, 200, 0, 1);
    for c in &items {
        let (q, a) = qa(c);
        let expr = q.trim_start_matches("What is ").trim_end_matches('?');
        let parts: Vec<&str> = expr.split(' ').collect();
        let (x, y): (i64, i64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
        let want = match parts[1] {
            "+" => x + y,
            "-" => x - y,
            "*" => x * y,
            op => panic!("operator {op}"),
        };
        assert_eq!(a, want.to_string(), "{q}");
    }
    let (items, _) = generate(SyntheticTask::Spelling, 50, 0, 2);
    for c in &items {
        let (q, a) = qa(c);
        let word = q.split('"').nth(1).unwrap();
        assert_eq!(a.replace('-', ""), word);
    }
    let (items, _) = generate(SyntheticTask::CountLetters, 100, 0, 3);
    for c in &items {
        let (q, a) = qa(c);
        let parts: Vec<&str> = q.split('"').collect();
        let (letter, word) = (parts[1].chars().next().unwrap(), parts[3]);
        assert_eq!(
            a,
            word.chars().filter(|&x| x == letter).count().to_string(),
            "{q}"
        );
    }
}
