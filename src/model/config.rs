//! Model configuration, presets (spec §C) and the FLA `config.json` form.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// How parameters are initialised (spec §A.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// FLA `_init_weights`: every Linear/Conv/Embedding ~ N(0, initializer_range).
    Fla,
    /// NVlabs `mamba_init`: PyTorch default kaiming-uniform linears, conv U(±1/√W), MLP down
    /// projection rescaled by 1/√(2L), embeddings N(0, 0.02).
    Nvlabs,
}

/// A Gated DeltaNet language model. Field names follow FLA's `GatedDeltaNetConfig`, so the
/// serialised form is a `config.json` that FLA / transformers read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// GDN q/k heads (also the value heads unless `num_v_heads` is set).
    pub num_heads: usize,
    /// FLA's `num_v_heads`: value heads, a multiple of `num_heads` (GVA: value head i reads q/k
    /// head i / (num_v_heads / num_heads); spec §A). `None` (null): as many as `num_heads`.
    #[serde(default)]
    pub num_v_heads: Option<usize>,
    /// Key/query head dimension K.
    pub head_dim: usize,
    /// V = K · expand_v.
    pub expand_v: f64,
    /// SwiGLU hidden width.
    pub intermediate_size: usize,
    pub conv_size: usize,
    pub norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// NVlabs' b_proj has a bias; FLA's does not.
    #[serde(default)]
    pub b_proj_bias: bool,
    /// FLA's `allow_neg_eigval`: β = 2·sigmoid(b) ∈ (0, 2), so that the state transition
    /// I − β k kᵀ can have a negative eigenvalue (spec §A, step 6). Off by default, as in FLA.
    #[serde(default)]
    pub allow_neg_eigval: bool,
    #[serde(default = "default_init")]
    pub init: Init,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
}

fn default_init() -> Init {
    Init::Fla
}
fn default_initializer_range() -> f64 {
    0.02
}

/// Preset names accepted by `--preset`.
pub const PRESETS: &[&str] = &[
    "tiny",
    "mqar",
    "small",
    "fla-1.3b",
    "nvlabs-0.4b",
    "nvlabs-1.3b",
];

impl ModelConfig {
    /// V, the value head dimension.
    pub fn head_v_dim(&self) -> usize {
        (self.head_dim as f64 * self.expand_v).round() as usize
    }
    pub fn key_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Value heads HV (`num_v_heads`, else `num_heads`).
    pub fn v_heads(&self) -> usize {
        self.num_v_heads.unwrap_or(self.num_heads)
    }
    pub fn value_dim(&self) -> usize {
        self.v_heads() * self.head_v_dim()
    }

    /// A named preset (spec §C).
    pub fn preset(name: &str) -> Result<Self> {
        let fla = |d, layers, heads, k, expand_v, inter, vocab| ModelConfig {
            vocab_size: vocab,
            hidden_size: d,
            num_hidden_layers: layers,
            num_heads: heads,
            num_v_heads: None,
            head_dim: k,
            expand_v,
            intermediate_size: inter,
            conv_size: 4,
            norm_eps: 1e-6,
            tie_word_embeddings: false,
            b_proj_bias: false,
            allow_neg_eigval: false,
            init: Init::Fla,
            initializer_range: 0.02,
        };
        // NVlabs sizes everything from d: key_dim = 0.75d, value_dim = 1.5d, 9 heads, tied.
        let nvlabs = |d: usize, layers, inter| ModelConfig {
            vocab_size: 32000,
            hidden_size: d,
            num_hidden_layers: layers,
            num_heads: 9,
            num_v_heads: None,
            head_dim: d * 3 / 4 / 9,
            expand_v: 2.0,
            intermediate_size: inter,
            conv_size: 4,
            norm_eps: 1e-5,
            tie_word_embeddings: true,
            b_proj_bias: true,
            allow_neg_eigval: false,
            init: Init::Nvlabs,
            initializer_range: 0.02,
        };
        Ok(match name {
            "tiny" => fla(8, 2, 2, 4, 1.0, 16, 17),
            "mqar" => fla(64, 2, 2, 32, 1.0, 128, 256),
            // A byte-level language model that trains on a laptop CPU.
            "small" => fla(128, 4, 2, 64, 1.0, 384, 256),
            "fla-1.3b" => fla(2048, 21, 6, 256, 2.0, 5632, 32000),
            "nvlabs-0.4b" => nvlabs(1536, 11, 6144),
            "nvlabs-1.3b" => nvlabs(2400, 16, 5888),
            other => bail!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
        })
    }

    /// Resizes the model as FLA and NVlabs size theirs from the width: keys take 0.75·d split
    /// over `heads` (so 0.75·d must divide evenly), values V = K·expand_v, and the SwiGLU width
    /// is ⌈(8/3)·d / 256⌉·256. Fields given as `None` keep their value.
    pub fn resized(
        mut self,
        hidden: Option<usize>,
        layers: Option<usize>,
        heads: Option<usize>,
    ) -> Result<Self> {
        if hidden.is_none() && heads.is_none() && layers.is_none() {
            return Ok(self);
        }
        let d = hidden.unwrap_or(self.hidden_size);
        let h = heads.unwrap_or(self.num_heads);
        ensure!(
            d > 0 && h > 0,
            "`hidden_size` and `num_heads` must be positive (got {d} and {h})"
        );
        let key_dim = d * 3 / 4;
        ensure!(
            d.is_multiple_of(4) && key_dim.is_multiple_of(h),
            "`hidden_size` {d} does not split into `num_heads` {h}: the key width 0.75·{d} must be a multiple of the head count"
        );
        self.hidden_size = d;
        self.num_heads = h;
        self.head_dim = key_dim / h;
        self.intermediate_size = (d * 8 / 3).div_ceil(256) * 256;
        if let Some(l) = layers {
            self.num_hidden_layers = l;
        }
        self.validate()?;
        Ok(self)
    }

    /// Rejects inconsistent sizes, naming the field.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("conv_size", self.conv_size),
        ];
        for (name, v) in nonzero {
            ensure!(v > 0, "config field `{name}` must be positive, got {v}");
        }
        if let Some(hv) = self.num_v_heads {
            ensure!(
                hv > 0 && hv.is_multiple_of(self.num_heads),
                "config field `num_v_heads` = {hv} must be a positive multiple of `num_heads` = {} \
                 (each q/k head serves num_v_heads / num_heads value heads)",
                self.num_heads
            );
        }
        let v = self.head_dim as f64 * self.expand_v;
        ensure!(
            self.expand_v > 0.0 && (v - v.round()).abs() < 1e-9,
            "config field `expand_v` = {} does not give a whole value head dim (head_dim {} × expand_v)",
            self.expand_v,
            self.head_dim
        );
        ensure!(
            self.norm_eps > 0.0 && self.norm_eps.is_finite(),
            "config field `norm_eps` must be positive, got {}",
            self.norm_eps
        );
        ensure!(
            self.vocab_size <= u32::MAX as usize,
            "config field `vocab_size` is too large"
        );
        Ok(())
    }

    /// The FLA / transformers `config.json` text.
    pub fn to_hf_json(&self) -> String {
        let mut j = serde_json::to_value(self).expect("config serialises");
        let o = j.as_object_mut().expect("config is an object");
        let extra = serde_json::json!({
            "model_type": "gated_deltanet",
            "architectures": ["GatedDeltaNetForCausalLM"],
            "attn_mode": "chunk",
            "use_gate": true,
            "use_short_conv": true,
            "hidden_act": "swish",
            "hidden_ratio": 4,
            "max_position_embeddings": 2048,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": null,
            "fuse_norm": true,
            "fuse_swiglu": true,
            "fuse_cross_entropy": true,
            "use_cache": true,
            "attn": null,
        });
        for (k, v) in extra.as_object().expect("object") {
            o.insert(k.clone(), v.clone());
        }
        serde_json::to_string_pretty(&j).expect("json")
    }

    /// Reads a model `config.json`, given as the file or as the checkpoint folder holding it
    /// ([`ModelConfig::from_hf_json`]).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("failed to read model config {}", file.display()))?;
        Self::from_hf_json(&text, &file.display().to_string())
    }

    /// Reads a `config.json` written by gdn or by FLA. Fields FLA would default are defaulted
    /// as FLA does (including `intermediate_size` from `hidden_ratio`); options gdn does not
    /// implement are refused by name. `origin` names the file in errors.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self> {
        let mut j: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{origin}: not valid JSON"))?;
        let o = j
            .as_object_mut()
            .with_context(|| format!("{origin}: expected a JSON object"))?;
        if let Some(mt) = o.get("model_type").and_then(|v| v.as_str()) {
            ensure!(
                mt == "gated_deltanet",
                "{origin}: model_type is `{mt}`, expected `gated_deltanet`"
            );
        }
        let given = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
            o.get(k).filter(|v| !v.is_null()).cloned()
        };
        for (field, want) in [
            ("use_gate", serde_json::json!(true)),
            ("use_short_conv", serde_json::json!(true)),
            ("conv_bias", serde_json::json!(false)),
            ("output_gate_activation", serde_json::json!("swish")),
            ("hidden_act", serde_json::json!("swish")),
        ] {
            if let Some(v) = given(o, field) {
                ensure!(
                    v == want,
                    "{origin}: `{field}` = {v} is not supported (gdn implements {want})"
                );
            }
        }
        for unsupported in ["attn", "attnres_block_size"] {
            if let Some(v) = given(o, unsupported) {
                bail!("{origin}: `{unsupported}` = {v} (hybrid layers) is not supported yet");
            }
        }
        // FLA's defaults (GatedDeltaNetConfig) for whatever the file leaves out.
        let defaults = serde_json::json!({
            "vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 21, "num_heads": 6,
            "head_dim": 256, "expand_v": 2.0, "conv_size": 4, "norm_eps": 1e-6,
            "tie_word_embeddings": false, "initializer_range": 0.02,
        });
        for (k, v) in defaults.as_object().expect("object") {
            if given(o, k).is_none() {
                o.insert(k.clone(), v.clone());
            }
        }
        if given(o, "intermediate_size").is_none() {
            let d = o["hidden_size"]
                .as_u64()
                .with_context(|| format!("{origin}: `hidden_size` must be an integer"))?;
            let ratio = given(o, "hidden_ratio")
                .and_then(|v| v.as_f64())
                .unwrap_or(4.0);
            let inter = (d as f64 * ratio * 2.0 / 3.0) as u64;
            o.insert(
                "intermediate_size".into(),
                serde_json::json!(inter.div_ceil(256) * 256),
            );
        }
        let has_init = o.contains_key("init");
        let mut cfg: ModelConfig =
            serde_json::from_value(j).with_context(|| format!("{origin}: malformed field"))?;
        cfg.validate().with_context(|| origin.to_string())?;
        if !has_init {
            cfg.init = Init::Fla;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_json_round_trips() {
        for name in PRESETS {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            let back = ModelConfig::from_hf_json(&c.to_hf_json(), "config.json").unwrap();
            assert_eq!(back, c, "{name}");
        }
        let nv = ModelConfig::preset("nvlabs-0.4b").unwrap();
        assert_eq!((nv.head_dim, nv.head_v_dim()), (128, 256));
        let nv13 = ModelConfig::preset("nvlabs-1.3b").unwrap();
        assert_eq!((nv13.head_dim, nv13.head_v_dim()), (200, 400));
    }

    #[test]
    fn allow_neg_eigval_reads_and_round_trips() {
        let c = ModelConfig::from_hf_json(
            r#"{"model_type": "gated_deltanet", "hidden_size": 256, "num_heads": 2, "head_dim": 96, "allow_neg_eigval": true}"#,
            "c.json",
        )
        .unwrap();
        assert!(c.allow_neg_eigval);
        let j: serde_json::Value = serde_json::from_str(&c.to_hf_json()).unwrap();
        assert_eq!(j["allow_neg_eigval"], serde_json::json!(true));
        assert_eq!(
            ModelConfig::from_hf_json(&c.to_hf_json(), "c.json").unwrap(),
            c
        );
        // Written by FLA as false or absent (gdn configs before the field): off.
        for text in [
            r#"{"hidden_size": 256, "num_heads": 2, "head_dim": 96, "allow_neg_eigval": false}"#,
            r#"{"hidden_size": 256, "num_heads": 2, "head_dim": 96}"#,
        ] {
            assert!(
                !ModelConfig::from_hf_json(text, "c.json")
                    .unwrap()
                    .allow_neg_eigval
            );
        }
    }

    #[test]
    fn fla_style_config_gets_flas_defaults() {
        let c = ModelConfig::from_hf_json(
            r#"{"model_type": "gated_deltanet", "hidden_size": 1024, "num_heads": 4, "intermediate_size": null}"#,
            "c.json",
        )
        .unwrap();
        // int(1024·4·2/3) = 2730, rounded up to a multiple of 256.
        assert_eq!(c.intermediate_size, 2816);
        assert_eq!(
            (
                c.head_dim,
                c.head_v_dim(),
                c.num_hidden_layers,
                c.vocab_size
            ),
            (256, 512, 21, 32000)
        );
        let err = ModelConfig::from_hf_json(r#"{"conv_bias": true}"#, "c.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv_bias"), "{err}");
    }

    #[test]
    fn resizing_from_the_width_checks_the_head_split() {
        let c = ModelConfig::preset("mqar")
            .unwrap()
            .resized(Some(256), Some(3), Some(4))
            .unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.head_dim,
                c.num_hidden_layers,
                c.intermediate_size
            ),
            (256, 48, 3, 768)
        );
        let err = ModelConfig::preset("mqar")
            .unwrap()
            .resized(Some(100), None, Some(4))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden_size") && err.contains("num_heads"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = ModelConfig::preset("gpt5").unwrap_err().to_string();
        assert!(err.contains("unknown preset `gpt5`"), "{err}");
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.num_heads = 0;
        assert!(c.validate().unwrap_err().to_string().contains("num_heads"));
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.expand_v = 1.3;
        assert!(c.validate().unwrap_err().to_string().contains("expand_v"));
        let bad = ModelConfig::preset("tiny")
            .unwrap()
            .to_hf_json()
            .replace("gated_deltanet", "llama");
        let err = ModelConfig::from_hf_json(&bad, "x/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x/config.json") && err.contains("llama"),
            "{err}"
        );
    }
}
