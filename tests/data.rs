//! Token shards, corpus preparation (text, JSONL, Parquet) and the batch loader.

mod common;

use chatforge::data::shard::{write_shard, TokenWidth, MAGIC_U16};
use chatforge::data::{load_meta, prepare, BatchLoader, PrepareOptions, ShardSet, TokenShard};
use chatforge::tokenizer::Tokenizer;
use common::*;
use std::path::Path;
use std::sync::OnceLock;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::train(&[shared_data().join("tinyshakespeare.txt")], 512).unwrap())
}

#[test]
fn shards_round_trip_in_both_widths() {
    let tmp = tempfile::tempdir().unwrap();
    let small: Vec<u32> = (0..1000).map(|i| (i * 37 % 65536) as u32).collect();
    let p = tmp.path().join("a.bin");
    write_shard(&p, &small, TokenWidth::U16).unwrap();
    let s = TokenShard::open(&p).unwrap();
    assert_eq!(s.width, TokenWidth::U16);
    assert_eq!((0..s.len()).map(|i| s.get(i)).collect::<Vec<_>>(), small);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024 + 2000);

    let big: Vec<u32> = (0..1000)
        .map(|i| 100_000 + i * 1_000_003 % 128_000)
        .collect();
    let p = tmp.path().join("b.bin");
    write_shard(&p, &big, TokenWidth::U32).unwrap();
    let s = TokenShard::open(&p).unwrap();
    assert_eq!(s.width, TokenWidth::U32);
    assert_eq!((0..s.len()).map(|i| s.get(i)).collect::<Vec<_>>(), big);
    // A u32 id cannot go into a u16 shard.
    assert!(write_shard(&tmp.path().join("c.bin"), &big, TokenWidth::U16).is_err());
}

/// Writes a shard byte by byte as llm.c's `write_datafile` does: 256 int32 header, then uint16 tokens.
fn write_llmc_shard(path: &Path, tokens: &[u16]) {
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = tokens.len() as i32;
    let mut bytes: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn llmc_shards_are_read_and_described() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u16> = (0..5000).map(|i| (i * 7 % 50257) as u16).collect();
    write_llmc_shard(&tmp.path().join("fineweb_train_000001.bin"), &tokens);
    write_llmc_shard(&tmp.path().join("fineweb_val_000000.bin"), &tokens[..1000]);
    let meta = load_meta(tmp.path()).unwrap();
    assert_eq!(meta.train_shards, vec!["fineweb_train_000001.bin"]);
    assert_eq!(meta.val_shards, vec!["fineweb_val_000000.bin"]);
    assert_eq!(meta.vocab_size, 50257);
    let s = TokenShard::open(&tmp.path().join("fineweb_train_000001.bin")).unwrap();
    assert_eq!(s.len(), 5000);
    assert_eq!(s.get(4999), tokens[4999] as u32);
    assert_eq!(MAGIC_U16, 20240520);
}

#[test]
fn truncated_or_foreign_shards_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("train_000000.bin");
    write_shard(&p, &[1, 2, 3, 4], TokenWidth::U16).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    let e = TokenShard::open(&p).err().unwrap().to_string();
    assert!(
        e.contains("truncated") && e.contains("train_000000.bin"),
        "{e}"
    );
    std::fs::write(&p, vec![7u8; 2048]).unwrap();
    let e = TokenShard::open(&p).err().unwrap().to_string();
    assert!(e.contains("not a token shard"), "{e}");
}

#[test]
fn loader_is_deterministic_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..20_000).map(|i| (i % 5000) as u32).collect();
    write_shard(
        &tmp.path().join("train_000000.bin"),
        &tokens[..12_000],
        TokenWidth::U16,
    )
    .unwrap();
    write_shard(
        &tmp.path().join("train_000001.bin"),
        &tokens[12_000..],
        TokenWidth::U16,
    )
    .unwrap();
    let names = vec![
        "train_000000.bin".to_string(),
        "train_000001.bin".to_string(),
    ];
    let open =
        || BatchLoader::new(ShardSet::open(tmp.path(), &names, 64).unwrap(), 4, 42, 0, 1).unwrap();
    let (mut a, mut b) = (open(), open());
    let batches_a: Vec<_> = (0..10).map(|_| a.next_batch().unwrap().inputs).collect();
    let batches_b: Vec<_> = (0..10).map(|_| b.next_batch().unwrap().inputs).collect();
    assert_eq!(batches_a, batches_b);
    assert_ne!(batches_a[0], batches_a[1]);
    // Targets are the inputs shifted by one, windows are contiguous in the shard.
    let mut c = open();
    let batch = c.next_batch().unwrap();
    for row in 0..4 {
        let x = &batch.inputs[row * 64..(row + 1) * 64];
        let y = &batch.targets[row * 64..(row + 1) * 64];
        assert_eq!(&x[1..], &y[..63]);
        assert_eq!((x[0] + 64) % 5000, y[63]);
    }
    // Restoring the position continues with exactly the next batch.
    let mut d = open();
    d.position = 7;
    assert_eq!(d.next_batch().unwrap().inputs, batches_a[7]);
    // Another rank reads other windows.
    let mut r1 =
        BatchLoader::new(ShardSet::open(tmp.path(), &names, 64).unwrap(), 4, 42, 1, 2).unwrap();
    assert_ne!(r1.next_batch().unwrap().inputs, batches_a[0]);
}

#[test]
fn prepare_reads_text_jsonl_and_parquet_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = [
        "First document.\nIt has two lines.",
        "Second, shorter.",
        "Third: émigré café ☕",
    ];
    let txt_dir = tmp.path().join("txt");
    std::fs::create_dir_all(&txt_dir).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(txt_dir.join(format!("{i}.txt")), d).unwrap();
    }
    let jsonl = tmp.path().join("docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({"body": d, "id": 1}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let parquet = tmp.path().join("docs.parquet");
    write_parquet(&parquet, "body", &docs);

    let opts = PrepareOptions {
        field: "body".into(),
        val_tokens: Some(0),
        ..Default::default()
    };
    let mut streams = Vec::new();
    for (name, input) in [("t", txt_dir), ("j", jsonl), ("p", parquet)] {
        let out = tmp.path().join(format!("out-{name}"));
        let meta = prepare(tok(), &[input], &out, &opts).unwrap();
        assert_eq!(meta.token_width, TokenWidth::U16);
        let s = TokenShard::open(&out.join(&meta.train_shards[0])).unwrap();
        streams.push((0..s.len()).map(|i| s.get(i)).collect::<Vec<_>>());
        assert!(out.join("tokenizer.json").exists() && out.join("meta.json").exists());
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    // Each document starts with <|endoftext|> and the rest decodes to the documents.
    let eot = tok().eot_id().unwrap();
    let parts: Vec<String> = streams[0]
        .split(|&t| t == eot)
        .skip(1)
        .map(|ids| tok().decode(ids).unwrap())
        .collect();
    assert_eq!(parts, docs);
}

fn write_parquet(path: &Path, column: &str, values: &[&str]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = parquet::schema::parser::parse_message_type(&format!(
        "message schema {{ REQUIRED BYTE_ARRAY {column} (UTF8); REQUIRED INT64 id; }}"
    ))
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(
        file,
        std::sync::Arc::new(schema),
        std::sync::Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let data: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
    col.typed::<ByteArrayType>()
        .write_batch(&data, None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let ids: Vec<i64> = (0..values.len() as i64).collect();
    col.typed::<parquet::data_type::Int64Type>()
        .write_batch(&ids, None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn prepare_splits_validation_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let opts = PrepareOptions {
        shard_tokens: 100_000,
        val_fraction: 0.1,
        ..Default::default()
    };
    let meta = prepare(
        tok(),
        &[shared_data().join("tinyshakespeare.txt")],
        &out,
        &opts,
    )
    .unwrap();
    let total = meta.train_tokens + meta.val_tokens;
    let frac = meta.val_tokens as f64 / total as f64;
    assert!((frac - 0.1).abs() < 0.01, "validation fraction {frac}");
    assert_eq!(meta.train_shards.len(), meta.train_tokens.div_ceil(100_000));
    let back = load_meta(&out).unwrap();
    assert_eq!(back.train_tokens, meta.train_tokens);
    // The directory is never overwritten.
    let e = prepare(
        tok(),
        &[shared_data().join("tinyshakespeare.txt")],
        &out,
        &opts,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
}

#[test]
fn prepare_rejects_bad_input_with_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = |n: &str| tmp.path().join(n);
    let opts = PrepareOptions::default();
    let jsonl = tmp.path().join("bad.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"ok\"}\n{\"text\": \"ok too\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    let e = prepare(tok(), std::slice::from_ref(&jsonl), &out("a"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
    assert!(!out("a").exists(), "a failed prepare leaves no output");

    std::fs::write(&jsonl, "{\"content\": \"no text field\"}\n").unwrap();
    let e = prepare(tok(), &[jsonl], &out("b"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("line 1") && e.contains("'text'") && e.contains("--field"),
        "{e}"
    );

    let pq = tmp.path().join("c.parquet");
    write_parquet(&pq, "content", &["a", "b"]);
    let e = prepare(tok(), &[pq], &out("c"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no column 'text'") && e.contains("content"),
        "{e}"
    );

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = prepare(tok(), &[empty], &out("d"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");

    let latin1 = tmp.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let e = prepare(tok(), &[latin1], &out("e"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("latin1.txt") && e.contains("UTF-8"), "{e}");
}

#[test]
fn a_single_huge_line_is_tokenized_in_bounded_pieces() {
    use chatforge::data::sources::{collect_inputs, for_each_piece};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("one-line.txt");
    // 6 MB without a newline; words of 5 letters and a space, then 1 MB without white space,
    // then two-byte characters.
    let mut text = "lorem ".repeat(1_000_000);
    text.push_str(&"x".repeat(1 << 20));
    text.push_str("é".repeat(100_000).as_str());
    std::fs::write(&path, &text).unwrap();
    let files = collect_inputs(&[path]).unwrap();
    let mut pieces = Vec::new();
    for_each_piece(&files[0], "text", |p| {
        pieces.push((p.text.len(), p.doc_start));
        assert!(
            p.text.len() <= 4 * 64 * 1024,
            "a piece of {} bytes",
            p.text.len()
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(pieces.iter().map(|p| p.0).sum::<usize>(), text.len());
    assert!(pieces[0].1 && pieces[1..].iter().all(|p| !p.1));
    assert!(pieces.len() >= 28, "{} pieces", pieces.len());
    // The only white space a multi-byte one, right where a piece may end.
    let path = tmp.path().join("nbsp.txt");
    let text = format!("{}\u{00A0}{}", "a".repeat(65536), "b".repeat(200_000));
    std::fs::write(&path, &text).unwrap();
    let files = collect_inputs(&[path]).unwrap();
    let mut total = 0;
    for_each_piece(&files[0], "text", |p| {
        total += p.text.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(total, text.len());
}
