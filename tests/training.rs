//! End-to-end checks of the trainer: checkpoints, exact resumption, failure handling.

use gdn::data::mqar::MqarConfig;
use gdn::model::safetensors_io::NamedTensor;
use gdn::model::{uniform_cu_seqlens, Model, ModelConfig};
use gdn::tensor::Rng;
use gdn::train::checkpoint;
use gdn::train::trainer::{RunOptions, CHECKPOINT_DIR, METRICS_FILE};
use gdn::train::{train, DataSpec, TrainConfig};

/// A run small enough for a test: the tiny model on a short MQAR.
fn tiny_run(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::mqar_default();
    c.model = ModelConfig::preset("tiny").unwrap();
    c.model.vocab_size = 40;
    c.data = DataSpec::Mqar(MqarConfig {
        vocab: 40,
        seq_len: 24,
        num_kv_pairs: 3,
        power_a: 0.01,
        random_non_queries: true,
    });
    c.batch_size = 4;
    c.grad_accum = 2;
    c.steps = steps;
    c.schedule.total_steps = steps;
    c.schedule.warmup_steps = 2;
    c.eval_every = 3;
    c.eval_size = 8;
    c.checkpoint_every = 2;
    c.target_accuracy = None;
    c
}

fn losses(run: &std::path::Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

fn opts(out: &std::path::Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn stopped_and_resumed_run_reproduces_the_losses_bit_for_bit() {
    let whole = gdn::io::scratch_dir("whole");
    train(Some(tiny_run(7)), &opts(&whole)).unwrap();
    let split = gdn::io::scratch_dir("split");
    // Stop after 4 steps (checkpointed), then continue from the checkpoint.
    train(
        Some(tiny_run(7)),
        &RunOptions {
            stop_after: Some(4),
            ..opts(&split)
        },
    )
    .unwrap();
    assert_eq!(losses(&split).len(), 4);
    let o = train(
        None,
        &RunOptions {
            resume: true,
            ..opts(&split)
        },
    )
    .unwrap();
    assert_eq!(o.steps, 7);
    let (a, b) = (losses(&whole), losses(&split));
    assert_eq!(a.len(), 7);
    assert_eq!(
        a, b,
        "losses differ between the uninterrupted and the resumed run"
    );
    // The final parameters agree too.
    let (_, pa) = checkpoint::load_model(&whole.join(CHECKPOINT_DIR)).unwrap();
    let (_, pb) = checkpoint::load_model(&split.join(CHECKPOINT_DIR)).unwrap();
    assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn checkpoint_round_trip_reproduces_the_logits_exactly() {
    for tie in [false, true] {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.tie_word_embeddings = tie;
        cfg.b_proj_bias = tie;
        let model = Model::new(cfg).unwrap();
        let params: Vec<f32> = model.init_params(&mut Rng::new(5));
        let dir = gdn::io::scratch_dir(&format!("roundtrip-{tie}"));
        checkpoint::save(&dir, &model, &params, None).unwrap();
        let (loaded, lp) = checkpoint::load_model(&dir).unwrap();
        assert_eq!(loaded.config, model.config);
        let tokens = [1u32, 5, 9, 2, 16, 0, 3];
        let cu = uniform_cu_seqlens(1, tokens.len());
        let a = model.forward(&params, &tokens, &cu).unwrap().logits;
        let b = loaded.forward(&lp, &tokens, &cu).unwrap().logits;
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn a_checkpoint_keeps_the_fp8_scales_it_is_given() {
    let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
    let params: Vec<f32> = model.init_params(&mut Rng::new(7));
    let moments = vec![0.0f32; params.len()];
    let state = checkpoint::TrainerState {
        step: 3,
        tokens_seen: 96,
        data_rng: Rng::new(8),
        data_position: None,
        config: tiny_run(4),
    };
    let scales = vec![
        NamedTensor {
            name: "e4m3.history".into(),
            shape: vec![2, 3],
            data: vec![0.5, 1.0, 0.0, 448.0, 3.25, f32::from_bits(1)],
        },
        NamedTensor {
            name: "e5m2.seen".into(),
            shape: vec![2],
            data: vec![1.0, 0.0],
        },
    ];
    for with in [false, true] {
        let dir = gdn::io::scratch_dir(&format!("fp8-scales-{with}"));
        let files = checkpoint::TrainerFiles {
            state: &state,
            m: &moments,
            v: &moments,
            fp8_scales: with.then_some(scales.as_slice()),
        };
        checkpoint::save(&dir, &model, &params, Some(files)).unwrap();
        let loaded = checkpoint::load_fp8_scales(&dir).unwrap();
        let same = |a: &NamedTensor, b: &NamedTensor| {
            a.name == b.name
                && a.shape == b.shape
                && a.data
                    .iter()
                    .map(|x| x.to_bits())
                    .eq(b.data.iter().map(|x| x.to_bits()))
        };
        match loaded {
            Some(l) => {
                assert!(with, "a checkpoint saved without FP8 scales loaded some");
                assert_eq!(l.len(), scales.len());
                for t in &scales {
                    assert!(l.iter().any(|x| same(x, t)), "{} changed", t.name);
                }
            }
            None => assert!(!with, "the FP8 scales were lost"),
        }
    }
}

#[test]
fn corrupted_and_mismatched_checkpoints_are_named_errors() {
    let model = Model::new(ModelConfig::preset("tiny").unwrap()).unwrap();
    let params: Vec<f32> = model.init_params(&mut Rng::new(6));
    let dir = gdn::io::scratch_dir("corrupt");
    checkpoint::save(&dir, &model, &params, None).unwrap();
    let file = dir.join(checkpoint::MODEL_FILE);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", checkpoint::load_model(&dir).err().unwrap());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );

    // A config.json that disagrees with the tensors.
    std::fs::write(&file, &bytes).unwrap();
    let mut other = model.config.clone();
    other.hidden_size = 12;
    std::fs::write(dir.join(checkpoint::CONFIG_FILE), other.to_hf_json()).unwrap();
    let err = format!("{:#}", checkpoint::load_model(&dir).err().unwrap());
    assert!(
        err.contains("model.embeddings.weight") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let out = gdn::io::scratch_dir("nan");
    let mut c = tiny_run(50);
    c.checkpoint_every = 1;
    c.clip = 0.0;
    c.schedule.warmup_steps = 1;
    c.schedule.lr = 1e37;
    c.schedule.min_lr = 1e37;
    let err = format!("{:#}", train(Some(c), &opts(&out)).err().unwrap());
    assert!(
        err.contains("training stopped") && (err.contains("NaN") || err.contains("inf")),
        "{err}"
    );
    let ckpt = out.join(CHECKPOINT_DIR);
    let (_, params) = checkpoint::load_model(&ckpt).unwrap();
    assert!(
        params.iter().all(|p| p.is_finite()),
        "the kept checkpoint must be a good one"
    );
    assert!(err.contains("last good checkpoint"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial checkpoint folders left: {leftovers:?}"
    );
}

#[test]
fn byte_level_training_runs_on_a_text_file() {
    let dir = gdn::io::scratch_dir("bytes");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(60),
    )
    .unwrap();
    let mut c = tiny_run(6);
    c.data = DataSpec::Bytes {
        path: text,
        seq_len: 32,
    };
    let out = dir.join("run");
    let o = train(Some(c), &opts(&out)).unwrap();
    assert_eq!(o.steps, 6);
    let e = o.eval.unwrap();
    assert!(e.loss.is_finite() && e.accuracy.is_none());
    let (model, _) = checkpoint::load_model(&out.join(CHECKPOINT_DIR)).unwrap();
    assert_eq!(model.config.vocab_size, 256);
}

#[test]
fn token_shard_training_resumes_bit_for_bit() {
    use gdn::data::shards::{Dtype, ShardWriter};
    let dir = gdn::io::scratch_dir("shards");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = Rng::new(9);
    for split in ["train", "validation"] {
        let mut w = ShardWriter::new(&data, &format!("{split}_data_0"), 512, Dtype::U16).unwrap();
        let tokens: Vec<u32> = (0..4096).map(|_| rng.below(40) as u32).collect();
        w.push(&tokens).unwrap();
        w.finish();
    }
    let run = |name: &str, stop: Option<usize>, resume: bool| {
        let mut c = tiny_run(6);
        c.data = DataSpec::Shards {
            dir: data.clone(),
            seq_len: 31,
        };
        let out = dir.join(name);
        let o = RunOptions {
            stop_after: stop,
            resume,
            ..opts(&out)
        };
        train(if resume { None } else { Some(c) }, &o).unwrap();
        out
    };
    let whole = run("whole", None, false);
    let split = run("split", Some(3), false);
    run("split", None, true);
    assert_eq!(losses(&whole), losses(&split));
    assert_eq!(losses(&whole).len(), 6);
}
