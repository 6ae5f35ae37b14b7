//! Export to safetensors and back: logits reproduced bit for bit, the file read independently of
//! burn-store (the `safetensors` crate) holds exactly the documented names, shapes and PyTorch
//! `[out, in]` layout, and imports that do not fit fail naming what does not.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::backend::ndarray::NdArray;
use burn::prelude::*;
use castle_model::lm::Attention;
use castle_model::safetensors::{
    export, import, load_weights, ExportConfig, ExportTokenizer, CONFIG_FILE, WEIGHTS_FILE,
};
use castle_model::{AttentionKind, CastleLm, ModelConfig};
use common::random_tokens;
use safetensors::{Dtype, SafeTensors};

type B = NdArray<f32>;
const VOCAB: usize = 37;

/// Awkward sizes: 5 baseline heads (3 for CASTLE), head_dim 6, SwiGLU width 54, 3 layers.
fn config(kind: AttentionKind, tied: bool) -> ModelConfig {
    let window = (kind == AttentionKind::CastleSwl).then_some(3);
    let mut config = ModelConfig::new(3, 20, 5, 6).with_attention(kind, window);
    config.block_size = 4;
    config.max_seq_len = 32;
    config.tie_embeddings = tied;
    config
}

const CASES: [(AttentionKind, bool); 4] = [
    (AttentionKind::Baseline, true),
    (AttentionKind::Castle, true),
    (AttentionKind::CastleSwl, true),
    (AttentionKind::Castle, false),
];

fn bits(logits: Tensor<B, 3>) -> Vec<u32> {
    let data = logits.into_data();
    data.as_slice::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn export_then_import_reproduces_the_logits_bit_for_bit() {
    let device = Default::default();
    for (kind, tied) in CASES {
        let config = config(kind, tied);
        let model = config.init::<B>(VOCAB, &device);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        export(&model, None, &out).unwrap();
        let back: CastleLm<B> = import(&out, &config, VOCAB, None, &device).unwrap();
        let from_file: CastleLm<B> =
            import(&out.join(WEIGHTS_FILE), &config, VOCAB, None, &device).unwrap();
        let tokens = random_tokens::<B>(2, 11, VOCAB, 3, &device);
        let expected = bits(model.forward(tokens.clone()));
        let same = |m: &CastleLm<B>| bits(m.forward(tokens.clone())) == expected;
        assert!(
            same(&back),
            "{kind}, tied {tied}: logits differ after import"
        );
        assert!(
            same(&from_file),
            "{kind}, tied {tied}: logits differ (file path)"
        );
        let fresh = config.init::<B>(VOCAB, &device);
        assert!(!same(&fresh), "{kind}: a fresh model gives other logits");
    }
}

/// The documented tensors of `config`, PyTorch shapes.
fn documented(config: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, nd, h) = (
        config.d_model,
        config.n_heads() * config.head_dim,
        config.mlp_hidden(),
    );
    let mut names = BTreeMap::from([
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ]);
    if !config.tie_embeddings {
        names.insert("lm_head.weight".into(), vec![VOCAB, d]);
    }
    let mut projections = vec!["q_proj", "k_proj", "v_proj"];
    if config.attention != AttentionKind::Baseline {
        projections.extend(["uq_proj", "uk_proj", "uv_proj"]);
    }
    for i in 0..config.layers {
        let p = format!("model.layers.{i}");
        names.insert(format!("{p}.input_layernorm.weight"), vec![d]);
        names.insert(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        for proj in &projections {
            names.insert(format!("{p}.self_attn.{proj}.weight"), vec![nd, d]);
        }
        names.insert(format!("{p}.self_attn.o_proj.weight"), vec![d, nd]);
        names.insert(format!("{p}.mlp.gate_proj.weight"), vec![h, d]);
        names.insert(format!("{p}.mlp.up_proj.weight"), vec![h, d]);
        names.insert(format!("{p}.mlp.down_proj.weight"), vec![d, h]);
    }
    names
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Column block `p` of `parts` of a burn `[in, out]` weight, transposed to PyTorch's `[out, in]`.
fn torch_block(weight: Tensor<B, 2>, p: usize, parts: usize) -> Vec<f32> {
    let [rows, cols] = weight.dims();
    let w = cols / parts;
    values(weight.slice([0..rows, p * w..(p + 1) * w]).transpose())
}

/// What each documented tensor must hold, computed from the burn model's parameters.
fn expected_values(model: &CastleLm<B>) -> HashMap<String, Vec<f32>> {
    let mut want = HashMap::from([
        (
            "model.embed_tokens.weight".to_string(),
            values(model.embed.weight.val()),
        ),
        (
            "model.norm.weight".to_string(),
            values(model.norm.gamma.val()),
        ),
    ]);
    if let Some(head) = &model.lm_head {
        want.insert(
            "lm_head.weight".into(),
            torch_block(head.weight.val(), 0, 1),
        );
    }
    for (i, block) in model.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let (fused, names, out): (_, &[&str], _) = match &block.attn {
            Attention::Baseline(a) => (&a.qkv, &["q_proj", "k_proj", "v_proj"], &a.out),
            Attention::Castle(a) => (
                &a.in_proj,
                &[
                    "uq_proj", "uk_proj", "uv_proj", "q_proj", "k_proj", "v_proj",
                ],
                &a.out,
            ),
        };
        for (j, name) in names.iter().enumerate() {
            let w = torch_block(fused.weight.val(), j, names.len());
            want.insert(format!("{p}.self_attn.{name}.weight"), w);
        }
        want.insert(
            format!("{p}.self_attn.o_proj.weight"),
            torch_block(out.weight.val(), 0, 1),
        );
        want.insert(
            format!("{p}.input_layernorm.weight"),
            values(block.attn_norm.gamma.val()),
        );
        want.insert(
            format!("{p}.post_attention_layernorm.weight"),
            values(block.mlp_norm.gamma.val()),
        );
        for (name, linear) in [
            ("gate_proj", &block.mlp.gate),
            ("up_proj", &block.mlp.up),
            ("down_proj", &block.mlp.down),
        ] {
            want.insert(
                format!("{p}.mlp.{name}.weight"),
                torch_block(linear.weight.val(), 0, 1),
            );
        }
    }
    want
}

#[test]
fn the_file_holds_the_documented_names_shapes_and_pytorch_layout() {
    let device = Default::default();
    for (kind, tied) in CASES {
        let config = config(kind, tied);
        let model = config.init::<B>(VOCAB, &device);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        export(&model, None, &out).unwrap();
        let bytes = std::fs::read(out.join(WEIGHTS_FILE)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        assert_eq!(shapes, documented(&config), "{kind}, tied {tied}");
        let want = expected_values(&model);
        for (name, view) in file.tensors() {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let got: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert!(
                got == want[&name],
                "{name} ({kind}, tied {tied}): values differ"
            );
        }
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(json["attention"], kind.to_string());
        assert_eq!(json["num_attention_heads"], config.n_heads());
        assert_eq!(json["parity_heads"], 5);
        assert_eq!(json["intermediate_size"], 54);
        assert_eq!(json["tie_word_embeddings"], tied);
        assert_eq!(json["torch_dtype"], "float32");
        assert_eq!(json["rope_style"], "rotate_half");
    }
}

fn import_error(dir: &Path, config: &ModelConfig, vocab: usize, sha: Option<&str>) -> String {
    match import::<B>(dir, config, vocab, sha, &Default::default()) {
        Ok(_) => panic!("import with {config:?}, vocab {vocab}, tokenizer {sha:?} should fail"),
        Err(e) => e.to_string(),
    }
}

/// An edit of the run's `[model]`.
type Change = fn(&mut ModelConfig);

#[test]
fn an_import_that_does_not_fit_names_the_field() {
    let device = Default::default();
    let base = config(AttentionKind::Castle, true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(&base.init::<B>(VOCAB, &device), None, &out).unwrap();
    let cases: [(Change, &str, &str); 5] = [
        (|c| c.layers = 2, "num_hidden_layers = 3", "model.layers"),
        (
            |c| c.attention = AttentionKind::Baseline,
            "attention",
            "model.attention",
        ),
        (
            |c| c.castle_heads = Some(2),
            "num_attention_heads = 3",
            "model.heads",
        ),
        (
            |c| c.mlp_hidden = Some(50),
            "intermediate_size = 54",
            "model.mlp_hidden",
        ),
        (
            |c| c.tie_embeddings = false,
            "tie_word_embeddings",
            "model.tie_embeddings",
        ),
    ];
    for (change, field, key) in cases {
        let mut run = base.clone();
        change(&mut run);
        let message = import_error(&out, &run, VOCAB, None);
        assert!(
            message.contains(field) && message.contains(key),
            "{message}"
        );
        assert!(message.contains(CONFIG_FILE), "{message}");
    }
    let message = import_error(&out, &base, VOCAB + 1, None);
    assert!(message.contains("vocab_size = 37"), "{message}");
    // Settings that do not change the weights may differ.
    let mut longer = base.clone();
    (longer.max_seq_len, longer.block_size) = (64, 8);
    import::<B>(&out, &longer, VOCAB, None, &device).unwrap();
}

#[test]
fn the_tokenizer_hash_is_recorded_and_checked() {
    let device = Default::default();
    let base = config(AttentionKind::Baseline, true);
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tok.json");
    std::fs::write(&tokenizer, "{}").unwrap();
    let out = dir.path().join("export");
    let tok = ExportTokenizer {
        file: &tokenizer,
        sha256: "abc",
        eot_id: 5,
    };
    let written = export(&base.init::<B>(VOCAB, &device), Some(tok), &out).unwrap();
    assert_eq!(written, ExportConfig::read(&out.join(CONFIG_FILE)).unwrap());
    assert_eq!(
        (written.bos_token_id, written.eos_token_id),
        (Some(5), Some(5))
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{}"
    );
    let message = import_error(&out, &base, VOCAB, Some("def"));
    assert!(message.contains("tokenizer_sha256 = \"abc\""), "{message}");
    import::<B>(&out, &base, VOCAB, Some("abc"), &device).unwrap();

    // A baseline export is a LLaMA; one written before it said so (`castle`) still imports,
    // another model type does not.
    assert_eq!(written.model_type, "llama");
    let config_path = out.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).unwrap();
    for (model_type, loads) in [("castle", true), ("gpt2", false)] {
        let edited = text.replace("\"llama\"", &format!("{model_type:?}"));
        std::fs::write(&config_path, edited).unwrap();
        match import::<B>(&out, &base, VOCAB, Some("abc"), &device) {
            Ok(_) => assert!(loads, "{model_type}"),
            Err(e) => assert!(!loads && e.to_string().contains("gpt2"), "{e}"),
        }
    }
}

#[test]
fn missing_or_extra_tensors_are_named() {
    let device = Default::default();
    let base = config(AttentionKind::Castle, true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(&base.init::<B>(VOCAB, &device), None, &out).unwrap();
    let bytes = std::fs::read(out.join(WEIGHTS_FILE)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |keep: &dyn Fn(&str) -> bool, extra: bool, path: &Path| {
        let mut tensors: Vec<_> = file
            .tensors()
            .into_iter()
            .filter(|(n, _)| keep(n))
            .collect();
        if extra {
            let norm = file.tensor("model.norm.weight").unwrap();
            tensors.push(("model.extra.weight".into(), norm));
        }
        std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    };
    let missing = dir.path().join("missing.safetensors");
    rewrite(
        &|n| n != "model.layers.1.self_attn.uk_proj.weight",
        false,
        &missing,
    );
    let message = load_weights::<B>(&base, VOCAB, &missing, &device)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("blocks.1.attn.uk_proj.weight"),
        "{message}"
    );
    let extra = dir.path().join("extra.safetensors");
    rewrite(&|_| true, true, &extra);
    let message = load_weights::<B>(&base, VOCAB, &extra, &device)
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.extra.weight"), "{message}");
}

#[test]
fn export_refuses_a_directory_with_files_and_leaves_no_temporary() {
    let device = Default::default();
    let model = config(AttentionKind::Baseline, true).init::<B>(VOCAB, &device);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    std::fs::create_dir(&out).unwrap(); // empty: accepted
    export(&model, None, &out).unwrap();
    let message = export(&model, None, &out).unwrap_err().to_string();
    assert!(
        message.contains("not empty") && message.contains("export"),
        "{message}"
    );
    let mut entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["export"]);
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [CONFIG_FILE, WEIGHTS_FILE]);
}
