//! End to end: text files (.txt, .jsonl, .jsonl.zst) → trained byte-level BPE → LITPKDS
//! shards → packed batches, checking token counts, EOS placement and that decoding gives the
//! documents back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gdn::data::packed::{list_shards, PackedConfig, PackedDataset, TRAIN_PREFIX, VALID_PREFIX};
use gdn::data::prepare::{is_validation, prepare, read_documents, PrepareConfig};
use gdn::data::shards::{Dtype, Shard};
use gdn::data::tokenizer::{train_bpe, Tokenizer, DEFAULT_SPECIAL_TOKENS};

fn doc(i: usize) -> String {
    let words = [
        "gated",
        "delta",
        "rule",
        "state",
        "memory",
        "keys",
        "values",
        "decay",
        "chunk",
        "recurrence",
        "Ünïcödé",
        "漢字",
        "🚀",
    ];
    let mut s = format!("Document {i}:");
    for k in 0..(10 + (i * 7) % 40) {
        s.push(' ');
        s.push_str(words[(i * 31 + k * 17) % words.len()]);
        if k % 9 == 8 {
            s.push_str(".\n");
        }
    }
    if i % 10 == 3 {
        s.push_str(" a literal </s> in the text");
    }
    s
}

/// Writes the corpus: 2 .txt documents, 30 in a .jsonl (in a subfolder), 30 in a .jsonl.zst.
/// Returns the documents in the order `prepare` reads them (paths sorted by name).
fn write_corpus(dir: &Path) -> Vec<String> {
    let mut docs = Vec::new();
    for i in 0..2 {
        let d = doc(i);
        std::fs::write(dir.join(format!("a{i}.txt")), &d).unwrap();
        docs.push(d);
    }
    let mut zst_lines = String::new();
    for i in 2..32 {
        let d = doc(i);
        zst_lines.push_str(&serde_json::json!({"text": d, "meta": {"i": i}}).to_string());
        zst_lines.push('\n');
        docs.push(d);
    }
    let zst = ruzstd::encoding::compress_to_vec(
        zst_lines.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    std::fs::write(dir.join("b.jsonl.zst"), zst).unwrap();
    std::fs::create_dir_all(dir.join("c")).unwrap();
    let mut lines = String::new();
    for i in 32..62 {
        let d = doc(i);
        lines.push_str(&serde_json::json!({"text": d}).to_string());
        lines.push_str("\n\n");
        docs.push(d);
    }
    std::fs::write(dir.join("c/docs.jsonl"), lines).unwrap();
    std::fs::write(dir.join("c/README.md"), "not an input").unwrap();
    docs
}

fn shard_tokens(files: &[PathBuf], chunk: usize, vocab: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for f in files {
        let s = Shard::open(f).unwrap();
        assert_eq!(s.header.chunk_size, chunk);
        assert_eq!(s.header.dtype, Dtype::U16);
        s.validate_vocab(vocab).unwrap();
        out.extend(s.tokens);
    }
    out
}

#[test]
fn text_to_tokenizer_to_shards_to_batches() {
    let root = gdn::io::scratch_dir("e2e");
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let docs = write_corpus(&corpus);

    // The reader sees the documents in path order.
    let mut read = Vec::new();
    for f in
        gdn::data::prepare::find_inputs(std::slice::from_ref(&corpus), &["txt".into()]).unwrap()
    {
        read_documents(&f, &indicatif::ProgressBar::hidden(), &mut |d| {
            read.push(d);
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(read, docs);

    // Tokenizer: train, save, load.
    let specials: Vec<String> = DEFAULT_SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let trained = train_bpe(
        std::slice::from_ref(&corpus),
        &["txt".into()],
        420,
        &specials,
        true,
    )
    .unwrap();
    let tok_path = root.join("tokenizer.json");
    trained.save(&tok_path).unwrap();
    let tok = Tokenizer::load(&tok_path, None).unwrap();
    let eos = tok.eos_id();
    assert_eq!(eos, 2);
    assert!(tok.vocab_size() <= 420);

    // Prepare shards.
    let out = root.join("shards");
    let chunk = 64;
    let cfg = PrepareConfig {
        val_fraction: 0.25,
        chunk_size: chunk,
        name: "test".into(),
        seed: 11,
        quiet: true,
        ..PrepareConfig::new(vec![corpus.clone()], out.clone())
    };
    let s = prepare(&tok, &cfg).unwrap();
    assert_eq!(s.input_files, 4);

    // What the shards must hold: each split's documents, encoded, EOS after each, in order.
    let mut expect: HashMap<bool, (Vec<u32>, Vec<&String>)> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        let e = expect.entry(is_validation(11, i as u64, 0.25)).or_default();
        e.0.extend(tok.encode(d).unwrap());
        e.0.push(eos);
        e.1.push(d);
    }
    for (valid, split, prefix) in [
        (false, &s.train, "train_test_0_"),
        (true, &s.validation, "validation_test_0_"),
    ] {
        let (stream, split_docs) = &expect[&valid];
        assert!(split_docs.len() >= 5, "a split with too few documents");
        assert_eq!(split.documents, split_docs.len() as u64);
        assert_eq!(split.tokens, stream.len() as u64);
        assert_eq!(split.tokens_written + split.tokens_dropped, split.tokens);
        assert_eq!(split.tokens_written, (split.shards * chunk) as u64);
        assert!(split.tokens_dropped < chunk as u64);
        assert!(split.shards >= 2);
        let files = list_shards(&out, prefix).unwrap();
        assert_eq!(files, split.files);
        let got = shard_tokens(&files, chunk, tok.vocab_size());
        assert_eq!(got[..], stream[..got.len()]);
        // EOS only at document ends (the literal "</s>" in some texts is plain text), and the
        // complete documents decode back to their text.
        let pieces: Vec<&[u32]> = got.split(|&t| t == eos).collect();
        let complete = pieces.len() - 1;
        assert!(complete >= 3);
        for (k, p) in pieces[..complete].iter().enumerate() {
            assert_eq!(&tok.decode(p, false).unwrap(), split_docs[k]);
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prepare.json")).unwrap()).unwrap();
    assert_eq!(summary["train"]["documents"], s.train.documents);

    // Packed training batches: one epoch is every whole block of every train shard.
    let t = 15;
    let mut ds = PackedDataset::open(
        &out,
        TRAIN_PREFIX,
        PackedConfig {
            n_chunks: 2,
            vocab: Some(tok.vocab_size()),
            ..PackedConfig::train(t)
        },
    )
    .unwrap();
    let per_file = chunk / (t + 1);
    assert_eq!(ds.blocks_per_epoch(), s.train.shards * per_file);
    let train_tokens = shard_tokens(&s.train.files, chunk, tok.vocab_size());
    let mut want: Vec<Vec<u32>> = train_tokens
        .chunks(chunk)
        .flat_map(|c| c.chunks_exact(t + 1).map(|b| b.to_vec()))
        .collect();
    let mut got = Vec::new();
    let mut left = ds.blocks_per_epoch();
    while left > 0 {
        let b = ds.next_batch(left.min(3)).unwrap().unwrap();
        for r in 0..b.batch {
            let inp = &b.inputs[r * t..(r + 1) * t];
            let tgt = &b.targets[r * t..(r + 1) * t];
            assert_eq!(inp[1..], tgt[..t - 1]);
            let mut blk = inp.to_vec();
            blk.push(tgt[t - 1]);
            got.push(blk);
        }
        left -= b.batch;
    }
    assert_ne!(got, want, "training blocks are shuffled");
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // Validation: in order, finite. Its shards are read in the seeded file order, so compare
    // as a set of blocks, each in one piece.
    let mut vs = PackedDataset::open(&out, VALID_PREFIX, PackedConfig::validation(t)).unwrap();
    let vt = shard_tokens(&s.validation.files, chunk, tok.vocab_size());
    let mut vwant: Vec<Vec<u32>> = vt
        .chunks(chunk)
        .flat_map(|c| c.chunks_exact(t + 1).map(|b| b.to_vec()))
        .collect();
    let mut vgot = Vec::new();
    while let Some(b) = vs.next_block().unwrap() {
        vgot.push(b);
    }
    assert_eq!(vgot.len(), s.validation.shards * per_file);
    vgot.sort();
    vwant.sort();
    assert_eq!(vgot, vwant);

    // Running again into the same folder is refused rather than mixing old and new shards.
    let e = prepare(&tok, &cfg).unwrap_err().to_string();
    assert!(e.contains("already holds shards"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn prepare_reports_bad_input_with_file_and_line() {
    let root = gdn::io::scratch_dir("bad");
    let tok = gdn::data::tokenizer::train_bpe_from_iter(
        (0..50).map(doc),
        300,
        &DEFAULT_SPECIAL_TOKENS.map(String::from),
    )
    .unwrap();
    let input = root.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let cfg = PrepareConfig {
        chunk_size: 8,
        quiet: true,
        ..PrepareConfig::new(vec![input], root.join("out"))
    };
    let e = prepare(&tok, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("in.jsonl line 2") && e.contains("\"text\""),
        "{e}"
    );
    let bad = PrepareConfig {
        val_fraction: 1.0,
        ..cfg.clone()
    };
    assert!(prepare(&tok, &bad)
        .unwrap_err()
        .to_string()
        .contains("--val-fraction"));
    let bad = PrepareConfig {
        name: "a/b".into(),
        ..cfg
    };
    assert!(prepare(&tok, &bad)
        .unwrap_err()
        .to_string()
        .contains("--name"));
    std::fs::remove_dir_all(&root).unwrap();
}
