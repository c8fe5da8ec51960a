//! Generation and evaluation on a freshly trained byte-level model, through the library
//! functions behind `gdn generate` and `gdn eval`.

use gdn::eval::{evaluate_blocks, evaluate_tokens, CpuScorer, EvalOptions};
use gdn::model::decode::{generate, GenerateOptions, StopReason};
use gdn::model::sample::{argmax, ByteCodec, Sampler, StreamDecoder, TextCodec};
use gdn::model::{Model, ModelConfig};
use gdn::train::checkpoint;
use gdn::train::trainer::{RunOptions, CHECKPOINT_DIR};
use gdn::train::{train, DataSpec, TrainConfig};

const SEQ_LEN: usize = 32;

fn corpus() -> String {
    "the quick brown fox jumps over the lazy dog. ".repeat(60)
}

/// Trains the tiny model on bytes for a few steps; returns the run's final eval loss and the
/// checkpoint's model and parameters.
fn trained() -> (f64, Model, Vec<f32>) {
    let dir = gdn::io::scratch_dir("run");
    let text = dir.join("corpus.txt");
    std::fs::write(&text, corpus()).unwrap();
    let mut c = TrainConfig::mqar_default();
    c.model = ModelConfig::preset("tiny").unwrap();
    c.data = DataSpec::Bytes {
        path: text,
        seq_len: SEQ_LEN,
    };
    c.batch_size = 4;
    c.steps = 30;
    c.schedule.total_steps = 30;
    c.schedule.warmup_steps = 2;
    c.schedule.lr = 1e-2;
    c.schedule.min_lr = 1e-3;
    c.eval_every = 30;
    c.eval_size = 3;
    c.checkpoint_every = 30;
    c.target_accuracy = None;
    let out = dir.join("out");
    let o = train(
        Some(c),
        &RunOptions {
            out: out.clone(),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (model, params) = checkpoint::load_model(&out.join(CHECKPOINT_DIR)).unwrap();
    assert_eq!(model.config.vocab_size, 256);
    (o.eval.unwrap().loss, model, params)
}

#[test]
fn generate_and_eval_a_trained_byte_model() {
    let (train_eval_loss, model, params) = trained();
    let codec = ByteCodec;
    let prompt = codec.encode("the quick brown").unwrap();

    // Greedy generation, streamed through the incremental decoder.
    let opts = GenerateOptions {
        max_tokens: 24,
        sampler: Sampler::greedy(),
        stop_tokens: vec![],
        seed: 0,
    };
    let mut dec = StreamDecoder::new();
    let mut streamed = String::new();
    let g = generate(&model, &params, &prompt, &opts, &mut |t| {
        streamed += &dec.push(&codec, t);
        Ok(())
    })
    .unwrap();
    streamed += &dec.finish(&codec);
    assert_eq!(g.tokens.len(), 24);
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!(streamed, codec.decode(&g.tokens));
    // Each greedy token is the argmax of the full forward over everything before it (f32:
    // the recurrent and chunked paths agree to round-off, far below the logit gaps here).
    let mut seq = prompt.clone();
    let v = model.config.vocab_size;
    for &t in &g.tokens {
        let logits = model
            .forward(&params, &seq, &[0, seq.len()])
            .unwrap()
            .logits;
        let last = &logits[logits.len() - v..];
        let best = argmax(last);
        if best != t {
            // Only acceptable as a near tie.
            let gap = (last[best as usize] - last[t as usize]).abs();
            assert!(gap < 1e-4, "token {t} vs argmax {best} (gap {gap})");
        }
        seq.push(t);
    }

    // Sampling is seeded: same seed, same text; a stop token ends it early.
    let sampled = |seed, stop: Vec<u32>| {
        let o = GenerateOptions {
            max_tokens: 16,
            sampler: Sampler {
                temperature: 0.8,
                top_k: 20,
                top_p: 0.95,
            },
            stop_tokens: stop,
            seed,
        };
        generate(&model, &params, &prompt, &o, &mut |_| Ok(())).unwrap()
    };
    let a = sampled(5, vec![]);
    assert_eq!(a, sampled(5, vec![]));
    let s = sampled(5, vec![a.tokens[3]]);
    assert_eq!(s.stop, StopReason::StopToken(a.tokens[3]));
    assert!(s.tokens.len() <= 3 && s.tokens[..] == a.tokens[..s.tokens.len()]);

    // Evaluation on the trainer's own validation windows (consecutive windows of SEQ_LEN + 1
    // bytes starting every SEQ_LEN bytes of the last 10%, 3 batches of 4) reproduces the
    // trainer's eval loss: any block source can feed `evaluate_blocks`.
    let bytes: Vec<u32> = corpus().bytes().map(u32::from).collect();
    let valid = &bytes[bytes.len() - bytes.len() / 10..];
    let windows = ((valid.len() - 1) / SEQ_LEN).min(12);
    let blocks = (0..windows).map(|i| Ok(valid[i * SEQ_LEN..(i + 1) * SEQ_LEN + 1].to_vec()));
    let r = evaluate_blocks(
        &mut CpuScorer {
            model: &model,
            params: &params,
        },
        blocks,
        &EvalOptions::new(vec![SEQ_LEN]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.blocks, windows);
    let rel = (r.results[0].loss - train_eval_loss).abs() / train_eval_loss;
    assert!(
        rel < 1e-5,
        "eval {} vs trainer {train_eval_loss}",
        r.results[0].loss
    );

    // Several lengths in one pass over the whole file.
    let mut opts = EvalOptions::new(vec![64, 8, 16]);
    opts.max_blocks = Some(6);
    let r = evaluate_tokens(
        &mut CpuScorer {
            model: &model,
            params: &params,
        },
        &bytes,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.blocks, 6);
    let lens: Vec<usize> = r.results.iter().map(|x| x.length).collect();
    assert_eq!(lens, vec![8, 16, 64]);
    for x in &r.results {
        assert_eq!(x.tokens, 6 * x.length);
        assert!(x.loss.is_finite() && x.loss > 0.0);
        assert!((x.ppl - x.loss.exp()).abs() < 1e-9 * x.ppl);
    }
    // Trained on this text, the model beats uniform guessing (ln 256 ≈ 5.55 nats).
    assert!(r.results[2].loss < 256f64.ln(), "{}", r.table());
}

/// Streaming through a Hugging Face byte-level BPE emits only complete characters and adds up
/// to the full decode, also when a multi-byte character is split across tokens.
#[test]
fn hf_tokenizer_streams_complete_text() {
    use gdn::data::tokenizer::{train_bpe_from_iter, DEFAULT_SPECIAL_TOKENS};
    let docs: Vec<String> = (0..50)
        .map(|i| format!("doc {i}: café – naïve façade, 😀 {i} times. the quick brown fox"))
        .collect();
    let specials: Vec<String> = DEFAULT_SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tk = train_bpe_from_iter(docs.into_iter(), 300, &specials).unwrap();
    assert_eq!(TextCodec::eos(&tk), Some(2));
    let text = "naïve 😀 façade – the fox 🦊!";
    let ids = TextCodec::encode(&tk, text).unwrap();
    assert_eq!(TextCodec::decode(&tk, &ids), text);
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    let mut held_back = 0;
    for &t in &ids {
        let piece = dec.push(&tk, t);
        held_back += usize::from(piece.is_empty());
        assert!(!piece.contains('\u{FFFD}'), "partial character: {piece:?}");
        out += &piece;
    }
    out += &dec.finish(&tk);
    assert_eq!(out, text);
    // 🦊 is not in the training text, so it is spelt with byte tokens that split its UTF-8,
    // and the decoder held those back until the character was complete.
    assert!(held_back >= 3, "{held_back}");
}
