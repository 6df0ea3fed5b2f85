//! Text data, tokenizer, BERT encoder and text students against independent references, and text
//! training in the one loop (teacher fine-tune, distilled students, resume, the CLI).
//!
//! References come from `tests/fixtures/text/make_fixture.py` (a plain-Python BERT tokenizer and a
//! float64 numpy BERT, no shared code with the `tokenizers` crate or burn):
//! - `tiny-bert/`: a 2-layer random BERT under PyTorch names, committed, so it runs everywhere;
//! - `minilm-expected.json`: all-MiniLM-L6-v2, whose 87 MB weights `scripts/fetch-text-data.sh`
//!   puts in the cache (`.ci/run` runs it); the tests that need it, or the Rotten Tomatoes corpus
//!   the script fetches too, say SKIPPED where the cache lacks them (`common::require`).

mod common;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use distill::data::text::{load_text, TextSpec};
use distill::data::tokenizer::{TextTokenizer, TokenBatch};
use distill::data::DataError;
use distill::losses::{hidden_cosine, DistillLoss};
use distill::models::bert::{self, mean_pool, Bert, BertConfig};
use distill::models::text::{with_fresh_params, EncoderConfig, TextClassifier, TextModelSpec};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text")
}

/// The dataset cache, `DISTILL_DATA` or `~/.cache/distill`.
fn cache() -> Option<PathBuf> {
    distill::data::download::cache_dir().ok()
}

fn expected(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(value: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= tolerance,
        "{what}: max abs diff {worst:e} > {tolerance:e}"
    );
}

fn batch(tokenizer: &TextTokenizer, ids: &[Vec<u32>], device: &Device) -> TokenBatch {
    let refs: Vec<&[u32]> = ids.iter().map(|s| s.as_slice()).collect();
    TokenBatch::new(&refs, tokenizer.pad_id(), device)
}

/// `what` in the cache, where `scripts/fetch-text-data.sh` has put it (`file` tells whether it is
/// there); `None`, through `common::require`, where not.
fn fetched(dir: Option<PathBuf>, file: &str, what: &str, how_to_get: &str) -> Option<PathBuf> {
    let present = dir.as_ref().is_some_and(|d| d.join(file).is_file());
    let place = dir.as_ref().map_or_else(
        || "the cache (neither DISTILL_DATA nor HOME is set)".into(),
        |d| d.display().to_string(),
    );
    common::require(present, &format!("{what} in {place}"), how_to_get).then(|| dir.unwrap())
}

fn minilm_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("DISTILL_MINILM") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => cache().map(|c| c.join("all-MiniLM-L6-v2")),
    };
    fetched(
        dir,
        bert::WEIGHTS_FILE,
        "the MiniLM-L6 weights",
        "run scripts/fetch-text-data.sh (or set DISTILL_MINILM)",
    )
}

#[test]
fn tiny_bert_tokenizer_matches_the_reference_tokenizer() {
    let dir = fixtures().join("tiny-bert");
    let reference = expected(&dir.join("expected.json"));
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    assert_eq!(
        tokenizer.encode_all(&sentences).unwrap(),
        ids_of(&reference["ids"])
    );
    // The file pads to 32; padding is off here, so lengths follow the text.
    assert_eq!(tokenizer.encode("Awful plot.").unwrap().len(), 5);
}

#[test]
fn tiny_bert_reloads_from_pytorch_names_with_the_reference_outputs() {
    let device = Device::default();
    let dir = fixtures().join("tiny-bert");
    let reference = expected(&dir.join("expected.json"));
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let (model, config) = bert::load_pretrained(&dir, &device).unwrap();
    assert_eq!(config.num_hidden_layers, 2);
    assert_eq!(model.num_layers(), 2);

    let ids = ids_of(&reference["ids"]);
    let tokens = batch(&tokenizer, &ids, &device);
    let states = model.hidden_states(&tokens);
    let expected_states = reference["hidden_states"].as_array().unwrap();
    assert_eq!(states.len(), expected_states.len());
    let [rows, len] = tokens.dims();
    for (layer, (state, want)) in states.iter().zip(expected_states).enumerate() {
        // Padding positions hold values too, but nothing reads them: compare real tokens only.
        let got = values(state.clone());
        let want = floats(want);
        let width = got.len() / (rows * len);
        for (row, seq) in ids.iter().enumerate() {
            let span = row * len * width..(row * len + seq.len()) * width;
            assert_close(
                &got[span.clone()],
                &want[span],
                1e-4,
                &format!("hidden state {layer}, sentence {row}"),
            );
        }
    }
    let pooled = values(mean_pool(states[2].clone(), tokens.padding.clone()));
    assert_close(
        &pooled,
        &floats(&reference["mean_pooled"]),
        1e-4,
        "mean pooled",
    );
    // forward() is the last hidden state.
    let last = values(model.forward(&tokens));
    assert_eq!(last, values(states[2].clone()));
}

#[test]
fn tiny_bert_gives_each_sentence_the_same_embedding_alone_and_padded_in_a_batch() {
    let device = Device::default();
    let dir = fixtures().join("tiny-bert");
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let (model, _) = bert::load_pretrained(&dir, &device).unwrap();
    let ids = ids_of(&expected(&dir.join("expected.json"))["ids"]);
    let together = batch(&tokenizer, &ids, &device);
    let pooled = values(mean_pool(
        model.forward(&together),
        together.padding.clone(),
    ));
    let width = pooled.len() / ids.len();
    for (row, seq) in ids.iter().enumerate() {
        let alone = batch(&tokenizer, std::slice::from_ref(seq), &device);
        let single = values(mean_pool(model.forward(&alone), alone.padding.clone()));
        assert_close(
            &pooled[row * width..(row + 1) * width],
            &single,
            1e-5,
            "alone vs batch",
        );
    }
}

#[test]
fn bert_loading_names_what_does_not_fit() {
    let device = Device::default();
    let dir = fixtures().join("tiny-bert");
    let work = tempfile::tempdir().unwrap();
    let config: Value = expected(&dir.join("config.json"));
    let weights = dir.join(bert::WEIGHTS_FILE);

    // One layer more than the file holds: the missing tensors are named.
    let mut deeper = config.clone();
    deeper["num_hidden_layers"] = 3.into();
    let mut model: Bert = serde_json::from_value::<bert::BertConfig>(deeper)
        .unwrap()
        .init(&device);
    let err = bert::load_weights(&mut model, &weights)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder.layers.2"), "{err}");

    // A wider model: shapes do not fit.
    let mut wider = config.clone();
    wider["hidden_size"] = 16.into();
    let mut model = serde_json::from_value::<bert::BertConfig>(wider)
        .unwrap()
        .init(&device);
    assert!(bert::load_weights(&mut model, &weights).is_err());

    // Unsupported activation and impossible head count are refused by name.
    for (field, value, needle) in [
        ("hidden_act", Value::from("relu"), "hidden_act"),
        ("num_attention_heads", Value::from(3), "num_attention_heads"),
    ] {
        let mut bad = config.clone();
        bad[field] = value;
        let path = work.path().join("config.json");
        std::fs::write(&path, bad.to_string()).unwrap();
        let err = format!("{:#}", bert::BertConfig::from_file(&path).unwrap_err());
        assert!(err.contains(needle) && err.contains("config.json"), "{err}");
    }
    // No weights file.
    let err = bert::load_weights(&mut model, &work.path().join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn minilm_tokenizer_matches_the_reference_tokenizer() {
    let Some(dir) = minilm_dir() else {
        return;
    };
    let reference = expected(&fixtures().join("minilm-expected.json"));
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 128).unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    assert_eq!(
        tokenizer.encode_all(&sentences).unwrap(),
        ids_of(&reference["ids"])
    );
    assert_eq!(tokenizer.vocab_size(), 30_522);
    assert_eq!(tokenizer.pad_id(), 0);
    // Truncation keeps [CLS] … [SEP] within max_len.
    let short = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 8).unwrap();
    let ids = short.encode(&sentences[0]).unwrap();
    assert_eq!(ids.len(), 8);
    assert_eq!((ids[0], ids[7]), (101, 102));
}

#[test]
fn minilm_mean_pooled_embeddings_match_a_float64_reference_alone_and_in_a_padded_batch() {
    let Some(dir) = minilm_dir() else {
        return;
    };
    let device = Device::default();
    let reference = expected(&fixtures().join("minilm-expected.json"));
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 128).unwrap();
    let (model, config) = bert::load_pretrained(&dir, &device).unwrap();
    // The encoder tensors of the file, pooler excluded (counted from its safetensors header).
    assert_eq!(config.num_params(), 22_565_376);
    let ids = ids_of(&reference["ids"]);
    let want = floats(&reference["mean_pooled"]);
    let width = config.hidden_size;
    for (row, seq) in ids.iter().enumerate() {
        let alone = batch(&tokenizer, std::slice::from_ref(seq), &device);
        let pooled = values(mean_pool(model.forward(&alone), alone.padding.clone()));
        assert_close(
            &pooled,
            &want[row * width..(row + 1) * width],
            1e-4,
            "alone",
        );
    }
    let together = batch(&tokenizer, &ids, &device);
    let pooled = values(mean_pool(
        model.forward(&together),
        together.padding.clone(),
    ));
    assert_close(&pooled, &want, 1e-4, "padded batch");
}

#[test]
fn rotten_tomatoes_is_split_by_movie_into_the_documented_sizes() {
    let corpus = fetched(
        cache().map(|c| c.join("rotten-tomatoes")),
        distill::data::text::ROTTEN_TOMATOES_FILE,
        "the Rotten Tomatoes corpus",
        "run scripts/fetch-text-data.sh",
    );
    if corpus.is_none() {
        return;
    }
    let data = load_text(&"rotten-tomatoes".parse().unwrap()).unwrap();
    assert_eq!(data.classes, ["rotten", "fresh"]);
    assert_eq!((data.train.len(), data.test.len()), (10_300, 2_452));
    let fresh = data.test.iter().filter(|e| e.label == 1).count();
    assert_eq!(fresh, 1_371);
    let words: usize = data
        .train
        .iter()
        .map(|e| e.text.split_whitespace().count())
        .sum();
    let mean = words as f64 / data.train.len() as f64;
    assert!((15.0..22.0).contains(&mean), "{mean} words per snippet");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn text_error(spec: &str) -> String {
    match load_text(&spec.parse::<TextSpec>().unwrap()) {
        Ok(_) => panic!("{spec} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn labelled_text_files_load_with_sorted_classes_and_an_md5_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut tsv = String::from("text\tlabel\n");
    for i in 0..200 {
        tsv.push_str(&format!(
            "review number {i}\t{}\n",
            ["neg", "pos", "neutral"][i % 3]
        ));
    }
    let train = write(dir.path(), "reviews.tsv", tsv.as_bytes());
    let data = load_text(&format!("text:{}", train.display()).parse().unwrap()).unwrap();
    assert_eq!(data.name, "reviews");
    assert_eq!(data.classes, ["neg", "neutral", "pos"]);
    assert_eq!(data.train.len() + data.test.len(), 200);
    assert!((20..60).contains(&data.test.len()), "{}", data.test.len());
    let first = data
        .train
        .iter()
        .chain(&data.test)
        .find(|e| e.text == "review number 1")
        .unwrap();
    assert_eq!(data.classes[first.label], "pos");

    // An explicit test file, CSV with quoted multi-line text, numeric labels sorted as numbers.
    let train = write(
        dir.path(),
        "a.csv",
        b"label,text\n10,\"ten, with a comma\"\n2,two\n9,\"nine\nlines\"\n",
    );
    let test = write(dir.path(), "b.csv", b"label,text\n2,deux\n");
    let data = load_text(
        &format!("text:{},{}", train.display(), test.display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data.classes, ["2", "9", "10"]);
    assert_eq!(data.train[2].text, "nine\nlines");
    assert_eq!((data.test.len(), data.test[0].label), (1, 0));
}

#[test]
fn bad_text_files_name_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = write(d, "train.tsv", b"label\ttext\npos\tgood\nneg\tbad\n");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!(
                "text:{}",
                write(d, "nolabel.tsv", b"sentiment\ttext\npos\tgood\n").display()
            ),
            vec!["nolabel.tsv:1", "no `label` column"],
        ),
        (
            format!(
                "text:{}",
                write(d, "empty.tsv", b"label\ttext\npos\tgood\nneg\t  \n").display()
            ),
            vec!["empty.tsv:3", "empty text"],
        ),
        (
            format!(
                "text:{},{}",
                train.display(),
                write(d, "unknown.tsv", b"label\ttext\npos\tok\nmeh\tso-so\n").display()
            ),
            vec!["unknown.tsv:3", "unknown label `meh`", "neg, pos"],
        ),
        (
            format!(
                "text:{}",
                write(d, "latin1.tsv", b"label\ttext\npos\tgood\nneg\tna\xefve\n").display()
            ),
            vec!["latin1.tsv:3", "UTF-8"],
        ),
        (
            format!(
                "text:{}",
                write(d, "ragged.csv", b"label,text\npos,good\nneg,bad,extra\n").display()
            ),
            vec!["ragged.csv:3", "3 fields where the header has 2"],
        ),
        (
            format!(
                "text:{}",
                write(d, "one-class.tsv", b"label\ttext\npos\tgood\npos\tfine\n").display()
            ),
            vec!["one-class.tsv", "1 class(es)"],
        ),
        (
            format!(
                "text:{}",
                write(d, "reviews.txt", b"label\ttext\n").display()
            ),
            vec!["reviews.txt", ".tsv or .csv"],
        ),
        (
            format!("text:{}", d.join("absent.tsv").display()),
            vec!["absent.tsv", "not found"],
        ),
        (
            format!("rotten-tomatoes:{}", d.display()),
            vec!["rotten_tomatoes_corpus_full.csv", "fetch-text-data.sh"],
        ),
    ];
    for (spec, needles) in cases {
        let err = text_error(&spec);
        for needle in needles {
            assert!(err.contains(needle), "{spec}: `{needle}` not in: {err}");
        }
    }
    assert!(matches!(
        "texts:x".parse::<TextSpec>(),
        Err(DataError::TextSpec { .. })
    ));
}

#[test]
fn tokenizer_files_that_are_not_tokenizers_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = write(dir.path(), "tokenizer.json", b"{\"model\": 3}");
    let err = TextTokenizer::from_file(&bogus, 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not a Hugging Face"),
        "{err}"
    );
    let err = TextTokenizer::from_file(&dir.path().join("absent.json"), 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent.json") && err.contains("not found"),
        "{err}"
    );
    let real = fixtures().join("tiny-bert").join(bert::TOKENIZER_FILE);
    let err = TextTokenizer::from_file(&real, 2).unwrap_err().to_string();
    assert!(err.contains("max_len 2"), "{err}");
}

fn tiny_teacher(device: &Device) -> (TextClassifier, EncoderConfig) {
    let spec = TextModelSpec::Pretrained {
        dir: fixtures().join("tiny-bert"),
    };
    TextClassifier::init(&spec, 3, None, 7, device).unwrap()
}

#[test]
fn distilbert_student_from_layers_0_2_4_reproduces_those_teacher_layers_exactly() {
    let Some(dir) = minilm_dir() else {
        return;
    };
    let device = Device::default();
    let reference = expected(&fixtures().join("minilm-expected.json"));
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 128).unwrap();
    let (teacher, teacher_config) = bert::load_pretrained(&dir, &device).unwrap();
    let spec: TextModelSpec = toml::from_str(
        "kind = \"transformer\"\nlayers = 3\nwidth = 384\nheads = 12\nffn = 1536\nteacher_layers = [0, 2, 4]\n",
    )
    .unwrap();
    let (student, config) =
        TextClassifier::init(&spec, 2, Some((&teacher, &teacher_config)), 1, &device).unwrap();
    // A fresh student is in training mode (dropout on); its layers are compared in inference.
    let student = student.valid();
    let EncoderConfig::Transformer(config) = config else {
        panic!("{config:?}")
    };
    assert_eq!(config.num_hidden_layers, 3);
    let tokens = batch(&tokenizer, &ids_of(&reference["ids"]), &device);
    let teacher_states = teacher.hidden_states(&tokens);
    let student_bert = student.encoder.bert().unwrap();
    let student_states = student_bert.hidden_states(&tokens);
    assert_eq!(
        values(student_states[0].clone()),
        values(teacher_states[0].clone())
    );
    for (j, &i) in [0usize, 2, 4].iter().enumerate() {
        // Student layer j on teacher layer i's input gives teacher layer i's output, bit for bit.
        let out = student_bert.layer_forward(j, teacher_states[i].clone(), &tokens.padding);
        assert_eq!(
            values(out),
            values(teacher_states[i + 1].clone()),
            "layer {j} <- {i}"
        );
    }
    // The copy owns its parameters: none shares an id with the teacher's.
    let ids = |m: &Bert| {
        let mut ids = Vec::new();
        m.visit(&mut ParamIds(&mut ids));
        ids
    };
    let teacher_ids = ids(&teacher);
    assert!(ids(student_bert).iter().all(|id| !teacher_ids.contains(id)));
}

struct ParamIds<'a>(&'a mut Vec<burn::module::ParamId>);

impl burn::module::ModuleVisitor for ParamIds<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        self.0.push(param.id);
    }
}

#[test]
fn transformer_student_specs_are_checked_by_name() {
    let device = Device::default();
    let (teacher, config) = bert::load_pretrained(&fixtures().join("tiny-bert"), &device).unwrap();
    let cases = [
        (
            "layers = 2\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [0, 2]",
            "layer 2 does not exist",
        ),
        (
            "layers = 2\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [1, 0]",
            "strictly increasing",
        ),
        (
            "layers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [0, 1]",
            "names 2 layers",
        ),
        (
            "layers = 1\nwidth = 8\nheads = 2\nffn = 32\nteacher_layers = [1]",
            "ffn 32",
        ),
        (
            "layers = 1\nwidth = 8\nheads = 3\nffn = 16",
            "num_attention_heads 3",
        ),
        ("layers = 0\nwidth = 8\nheads = 2\nffn = 16", "layers is 0"),
    ];
    for (body, needle) in cases {
        let spec: TextModelSpec =
            toml::from_str(&format!("kind = \"transformer\"\n{body}\n")).unwrap();
        let err = TextClassifier::init(&spec, 2, Some((&teacher, &config)), 0, &device)
            .map(|_| ())
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(needle), "{body}: `{needle}` not in {err}");
    }
    // A scratch student of another shape is fine, and takes the teacher's vocabulary.
    let spec: TextModelSpec =
        toml::from_str("kind = \"transformer\"\nlayers = 1\nwidth = 4\nheads = 1\nffn = 8\n")
            .unwrap();
    let (_, student) =
        TextClassifier::init(&spec, 2, Some((&teacher, &config)), 0, &device).unwrap();
    let EncoderConfig::Transformer(student) = student else {
        panic!("{student:?}")
    };
    assert_eq!(
        (student.vocab_size, student.hidden_size),
        (config.vocab_size, 4)
    );
    assert!(TextClassifier::init(&spec, 2, None, 0, &device).is_err());
    // CNN students: positive sizes, at least one kernel width.
    for (body, needle) in [
        (
            "embedding = 0\nfilters = 4\nkernel_sizes = [3]",
            "must be positive",
        ),
        (
            "embedding = 4\nfilters = 4\nkernel_sizes = []",
            "kernel_sizes",
        ),
        (
            "embedding = 4\nfilters = 4\nkernel_sizes = [2, 0]",
            "kernel_sizes",
        ),
    ] {
        let spec: TextModelSpec = toml::from_str(&format!("kind = \"cnn\"\n{body}\n")).unwrap();
        let err = TextClassifier::init(&spec, 2, Some((&teacher, &config)), 0, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{body}: {err}");
    }
}

/// One LSTM direction in f64 over `inputs`, from burn's gate weights (`[d_in, d_out]` input and
/// hidden transforms with biases; gates i, f, o, c): the hidden state after every step.
fn reference_lstm(lstm: &burn::nn::Lstm, inputs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let gate = |g: &burn::nn::GateController| {
        (
            values(g.input_transform.weight.val()),
            values(g.input_transform.bias.as_ref().unwrap().val()),
            values(g.hidden_transform.weight.val()),
            values(g.hidden_transform.bias.as_ref().unwrap().val()),
        )
    };
    let gates = [
        gate(&lstm.input_gate),
        gate(lstm.forget_gate.as_ref().unwrap()),
        gate(&lstm.output_gate),
        gate(&lstm.cell_gate),
    ];
    let hidden = lstm.d_hidden;
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let (mut h, mut c) = (vec![0.0; hidden], vec![0.0; hidden]);
    let mut out = Vec::new();
    for x in inputs {
        let pre: Vec<Vec<f64>> = gates
            .iter()
            .map(|(wi, bi, wh, bh)| {
                (0..hidden)
                    .map(|j| {
                        (0..x.len()).map(|k| x[k] * wi[k * hidden + j]).sum::<f64>()
                            + bi[j]
                            + (0..hidden).map(|k| h[k] * wh[k * hidden + j]).sum::<f64>()
                            + bh[j]
                    })
                    .collect()
            })
            .collect();
        for j in 0..hidden {
            c[j] = sigmoid(pre[1][j]) * c[j] + sigmoid(pre[0][j]) * pre[3][j].tanh();
            h[j] = sigmoid(pre[2][j]) * c[j].tanh();
        }
        out.push(h.clone());
    }
    out
}

#[test]
fn bilstm_features_match_a_reference_lstm_and_ignore_padding() {
    let device = Device::default();
    let (teacher, config) = bert::load_pretrained(&fixtures().join("tiny-bert"), &device).unwrap();
    let spec: TextModelSpec =
        toml::from_str("kind = \"bilstm\"\nembedding = 3\nhidden = 2\n").unwrap();
    let (model, encoder) =
        TextClassifier::init(&spec, 2, Some((&teacher, &config)), 9, &device).unwrap();
    assert_eq!(encoder.features(), 4);
    assert_eq!(encoder.num_params(), model.encoder.num_params());
    let distill::models::text::TextEncoder::Bilstm(lstm) = &model.encoder else {
        panic!("not a BiLSTM")
    };
    let seq = [2u32, 7, 9, 11, 3];
    let alone = TokenBatch::new(&[&seq], 0, &device);
    let padded = TokenBatch::new(&[&[2, 5, 6, 8, 11, 12, 13, 3], &seq], 0, &device);
    let features = values(lstm.pooled(&alone));
    assert_close(
        &values(lstm.pooled(&padded))[4..],
        &features,
        1e-6,
        "BiLSTM features alone and padded",
    );
    let table = values(lstm.embeddings.weight.val());
    let e: Vec<Vec<f64>> = seq
        .iter()
        .map(|&id| table[id as usize * 3..id as usize * 3 + 3].to_vec())
        .collect();
    let reversed: Vec<Vec<f64>> = e.iter().rev().cloned().collect();
    let mut expected = Vec::new();
    for (direction, inputs) in [(&lstm.forward, &e), (&lstm.backward, &reversed)] {
        let states = reference_lstm(direction, inputs);
        for j in 0..2 {
            expected.push(
                states
                    .iter()
                    .map(|h| h[j])
                    .fold(f64::NEG_INFINITY, f64::max),
            );
        }
    }
    assert_close(&features, &expected, 1e-5, "BiLSTM features");
    // Impossible sizes are named.
    let zero: TextModelSpec =
        toml::from_str("kind = \"bilstm\"\nembedding = 0\nhidden = 2\n").unwrap();
    let err = TextClassifier::init(&zero, 2, Some((&teacher, &config)), 0, &device)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("must be positive"), "{err}");
}

#[test]
fn kim_cnn_features_match_a_hand_computation_and_ignore_padding() {
    let device = Device::default();
    let spec: TextModelSpec =
        toml::from_str("kind = \"cnn\"\nembedding = 3\nfilters = 2\nkernel_sizes = [1, 2]\n")
            .unwrap();
    let (_, config) = bert::load_pretrained(&fixtures().join("tiny-bert"), &device).unwrap();
    let (model, encoder) = TextClassifier::init(
        &spec,
        2,
        Some((
            &Bert::clone(
                &bert::load_pretrained(&fixtures().join("tiny-bert"), &device)
                    .unwrap()
                    .0,
            ),
            &config,
        )),
        5,
        &device,
    )
    .unwrap();
    assert_eq!(encoder.features(), 4);
    assert_eq!(
        encoder.num_params(),
        config.vocab_size * 3 + (3 * 2 + 2) + (2 * 3 * 2 + 2)
    );
    let distill::models::text::TextEncoder::Cnn(cnn) = &model.encoder else {
        panic!("not a CNN")
    };
    let seq = [2u32, 7, 9, 3];
    let alone = TokenBatch::new(&[&seq], 0, &device);
    let padded = TokenBatch::new(&[&seq, &[2, 5, 6, 8, 11, 12, 3]], 0, &device);
    let features = values(cnn.pooled(&alone));
    assert_eq!(features, values(cnn.pooled(&padded))[..4].to_vec());
    // By hand: embeddings e_t, filter (w, b); width 1: max_t relu(w.e_t + b); width 2 with full
    // zero padding: max over windows [0, e_0], [e_0, e_1], ..., [e_3, 0].
    let table = values(cnn.embeddings.weight.val());
    let emb = |id: u32| table[id as usize * 3..id as usize * 3 + 3].to_vec();
    let e: Vec<Vec<f64>> = seq.iter().map(|&id| emb(id)).collect();
    let w1 = values(cnn.convs[0].weight.val()); // [2, 3, 1]
    let b1 = values(cnn.convs[0].bias.as_ref().unwrap().val());
    let w2 = values(cnn.convs[1].weight.val()); // [2, 3, 2]
    let b2 = values(cnn.convs[1].bias.as_ref().unwrap().val());
    let zero = vec![0.0; 3];
    let mut expected = Vec::new();
    for f in 0..2 {
        let best = e
            .iter()
            .map(|x| (0..3).map(|c| w1[f * 3 + c] * x[c]).sum::<f64>() + b1[f])
            .fold(f64::NEG_INFINITY, f64::max);
        expected.push(best.max(0.0));
    }
    for f in 0..2 {
        let mut best = f64::NEG_INFINITY;
        for p in 0..seq.len() + 1 {
            let left = if p == 0 { &zero } else { &e[p - 1] };
            let right = if p == seq.len() { &zero } else { &e[p] };
            let value = (0..3)
                .map(|c| w2[(f * 3 + c) * 2] * left[c] + w2[(f * 3 + c) * 2 + 1] * right[c])
                .sum::<f64>()
                + b2[f];
            best = best.max(value);
        }
        expected.push(best.max(0.0));
    }
    assert_close(&features, &expected, 1e-5, "Kim CNN features");
}

#[test]
fn kd_and_cosine_vanish_when_the_student_is_the_teacher_and_no_gradient_reaches_the_teacher() {
    // seeds and draws from the process-wide random generator (dropout)
    let _serial = common::serial();
    let device = Device::default().autodiff();
    let (teacher, _) = tiny_teacher(&device);
    let student = with_fresh_params(teacher.clone());
    let dir = fixtures().join("tiny-bert");
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let tokens = batch(
        &tokenizer,
        &ids_of(&expected(&dir.join("expected.json"))["ids"]),
        &device,
    );
    // Same dropout draws for both passes, so the two networks compute the same function.
    device.seed(11);
    let teacher_out = teacher.forward_all(&tokens).unwrap();
    device.seed(11);
    let student_out = student.forward_all(&tokens).unwrap();
    let labels = Tensor::<1, burn::tensor::Int>::from_data([0i64, 1, 2, 1], &device);
    let kd = DistillLoss::Kd {
        alpha: 0.5,
        temperature: 2.0,
        t2_scaling: true,
    }
    .forward(
        student_out.logits.clone(),
        teacher_out.logits.clone(),
        labels,
        0.0,
        1,
    );
    let cosine = hidden_cosine(
        student_out.hidden_states[2].clone(),
        teacher_out.hidden_states[2].clone(),
        tokens.padding.clone(),
    );
    let soft: f32 = kd.soft.clone().into_scalar();
    let cos: f32 = cosine.clone().into_scalar();
    assert!(
        soft.abs() < 1e-6 && cos.abs() < 1e-6,
        "KL {soft}, cosine {cos}"
    );
    // The label term keeps a gradient for the student; the teacher gets none at all.
    let mut grads = (kd.total + cosine).backward();
    let teacher_grads = GradientsParams::from_module(&mut grads, &teacher);
    let student_grads = GradientsParams::from_module(&mut grads, &student);
    assert!(
        student_grads.len() > 10,
        "{} student gradients",
        student_grads.len()
    );
    assert_eq!(teacher_grads.len(), 0);
}

/// A two-class task over the tiny vocabulary: a text is positive when it holds more praise
/// words than complaints. Deterministic (an LCG), so every run sees the same data.
fn synthetic_reviews(n: usize, seed: u64) -> Vec<distill::data::text::TextExample> {
    let praise = ["good", "great", "fun"];
    let complaints = ["bad", "awful", "boring"];
    let filler = [
        "the", "film", "movie", "was", "plot", "acting", "and", "it", "very", "story",
    ];
    let mut state = seed;
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % m
    };
    (0..n)
        .map(|_| {
            let label = next(2);
            let (majority, minority) = if label == 1 {
                (&praise, &complaints)
            } else {
                (&complaints, &praise)
            };
            let mut words: Vec<&str> = (0..3 + next(5))
                .map(|_| filler[next(filler.len())])
                .collect();
            for _ in 0..1 + next(2) {
                words.insert(next(words.len() + 1), majority[next(3)]);
            }
            if next(3) == 0 {
                words.insert(next(words.len() + 1), minority[next(3)]);
                words.insert(next(words.len() + 1), majority[next(3)]);
            }
            distill::data::text::TextExample {
                text: words.join(" "),
                label,
            }
        })
        .collect()
}

#[test]
fn text_teacher_and_students_train_in_the_one_loop_and_resume_exactly() {
    // seeds and draws from the process-wide random generator (dropout)
    let _serial = common::serial();
    use distill::modality::text::{text_teacher_logits, TextArchitecture, TokenizedSplit};
    use distill::train::{fit_model, ModelJob, Objective, OptimizerConfig, TrainConfig};

    let device = Device::default();
    let work = tempfile::tempdir().unwrap();
    let dir = fixtures().join("tiny-bert");
    let tokenizer = TextTokenizer::from_file(&dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let train = TokenizedSplit::new(&synthetic_reviews(320, 1), &tokenizer).unwrap();
    let test = TokenizedSplit::new(&synthetic_reviews(120, 2), &tokenizer).unwrap();
    let classes = vec!["neg".to_string(), "pos".to_string()];
    let config = |epochs| TrainConfig {
        epochs,
        batch_size: 16,
        seed: 3,
        optimizer: OptimizerConfig {
            learning_rate: 1e-2,
            ..Default::default()
        },
        label_smoothing: 0.0,
        augmentation: None,
    };
    let teacher_spec = TextModelSpec::Pretrained { dir: dir.clone() };
    let teacher_config = config(20);
    let teacher = fit_model(
        ModelJob::<_> {
            architecture: TextArchitecture {
                spec: &teacher_spec,
                classes: &classes,
                teacher: None,
                tokenizer: &dir.join(bert::TOKENIZER_FILE),
                freeze_word_embeddings: false,
                max_len: 32,
            },
            train: &train,
            eval: &test,
            config: &teacher_config,
            objective: Objective::Labels,
            out: &work.path().join("teacher"),
            resume: false,
            init_from: None,
            progress: false,
            verbose: false,
        },
        &device,
    )
    .unwrap();
    let teacher_accuracy = teacher.history.last().unwrap().val_accuracy;
    assert!(teacher_accuracy > 0.9, "teacher {teacher_accuracy}");
    for file in [
        "text_model.toml",
        "model.bpk",
        "text_meta.json",
        "history.csv",
    ] {
        assert!(work.path().join("teacher").join(file).is_file(), "{file}");
    }

    // DistilBERT's initialisation from the fine-tuned teacher's embeddings and first layer.
    let teacher_encoder = teacher.model.encoder.bert().unwrap().valid();
    let teacher_encoder_config = BertConfig::from_file(&dir.join(bert::CONFIG_FILE)).unwrap();
    let logits = text_teacher_logits(
        &teacher.model,
        "tiny-teacher",
        &train,
        distill::distill::CacheLocation::Memory,
        &device,
        false,
    )
    .unwrap();
    let student_spec: TextModelSpec = toml::from_str(
        "kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [0]\n",
    )
    .unwrap();
    let student_config = config(8);
    let distilled = |out: &Path, resume: bool| {
        fit_model(
            ModelJob::<_> {
                architecture: TextArchitecture {
                    spec: &student_spec,
                    classes: &classes,
                    teacher: Some((&teacher_encoder, &teacher_encoder_config)),
                    tokenizer: &dir.join(bert::TOKENIZER_FILE),
                    freeze_word_embeddings: false,
                    max_len: 32,
                },
                train: &train,
                eval: &test,
                config: &student_config,
                objective: Objective::Distill {
                    loss: DistillLoss::Kd {
                        alpha: 0.5,
                        temperature: 2.0,
                        t2_scaling: true,
                    },
                    teacher: &logits,
                    hidden: None,
                },
                out,
                resume,
                init_from: None,
                progress: false,
                verbose: false,
            },
            &device,
        )
    };
    let out = work.path().join("distilled");
    let student = distilled(&out, false).unwrap();
    let accuracy = student.history.last().unwrap().val_accuracy;
    assert!(accuracy > 0.85, "distilled student {accuracy}");
    assert_eq!(student.history.len(), 8);

    // Killed during epoch 8: the newest checkpoint is gone; resuming reproduces the weights.
    let weights = std::fs::read(out.join("model.bpk")).unwrap();
    std::fs::remove_dir_all(out.join("checkpoints/epoch-0008")).unwrap();
    let resumed = distilled(&out, true).unwrap();
    assert_eq!(
        std::fs::read(out.join("model.bpk")).unwrap(),
        weights,
        "resumed weights differ"
    );
    assert_eq!(resumed.history.len(), 8);
    assert_eq!(
        resumed.history[7].val_accuracy,
        student.history[7].val_accuracy
    );
    // Kim's CNN over the teacher's vocabulary, distilled from the same cached logits.
    let cnn_spec: TextModelSpec =
        toml::from_str("kind = \"cnn\"\nembedding = 16\nfilters = 8\nkernel_sizes = [1, 2, 3]\n")
            .unwrap();
    let cnn = fit_model(
        ModelJob::<_> {
            architecture: TextArchitecture {
                spec: &cnn_spec,
                classes: &classes,
                teacher: Some((&teacher_encoder, &teacher_encoder_config)),
                tokenizer: &dir.join(bert::TOKENIZER_FILE),
                freeze_word_embeddings: false,
                max_len: 32,
            },
            train: &train,
            eval: &test,
            config: &student_config,
            objective: Objective::Distill {
                loss: DistillLoss::Kd {
                    alpha: 0.5,
                    temperature: 2.0,
                    t2_scaling: true,
                },
                teacher: &logits,
                hidden: None,
            },
            out: &work.path().join("cnn"),
            resume: false,
            init_from: None,
            progress: false,
            verbose: false,
        },
        &device,
    )
    .unwrap();
    let cnn_accuracy = cnn.history.last().unwrap().val_accuracy;
    assert!(cnn_accuracy > 0.85, "CNN student {cnn_accuracy}");
    let (reloaded, meta) =
        distill::modality::text::load_text_model(&work.path().join("cnn"), &device).unwrap();
    assert!(matches!(meta.encoder, EncoderConfig::Cnn(_)));
    let (_, reloaded_accuracy) = distill::train::evaluate_model::<distill::modality::text::Text>(
        &reloaded, &test, &device, 64,
    );
    assert_eq!(reloaded_accuracy, cnn_accuracy);

    // Another student architecture cannot resume this run.
    let other: TextModelSpec =
        toml::from_str("kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\n")
            .unwrap();
    let err = fit_model(
        ModelJob::<_> {
            architecture: TextArchitecture {
                spec: &other,
                classes: &classes,
                teacher: Some((&teacher_encoder, &teacher_encoder_config)),
                tokenizer: &dir.join(bert::TOKENIZER_FILE),
                freeze_word_embeddings: false,
                max_len: 32,
            },
            train: &train,
            eval: &test,
            config: &student_config,
            objective: Objective::<distill::distill::TeacherLogits>::Labels,
            out: &out,
            resume: true,
            init_from: None,
            progress: false,
            verbose: false,
        },
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot resume"), "{err}");
}

/// The synthetic reviews as `text:TRAIN,TEST` files in `dir` (320 train, 120 test).
fn synthetic_review_files(dir: &Path) -> String {
    let write_tsv = |name: &str, examples: &[distill::data::text::TextExample]| {
        let mut tsv = String::from("label\ttext\n");
        for e in examples {
            tsv.push_str(&format!("{}\t{}\n", ["neg", "pos"][e.label], e.text));
        }
        write(dir, name, tsv.as_bytes())
    };
    let train = write_tsv("train.tsv", &synthetic_reviews(320, 1));
    let test = write_tsv("test.tsv", &synthetic_reviews(120, 2));
    format!("text:{},{}", train.display(), test.display())
}

/// Runs the `distill` binary, which must succeed, and returns what it printed.
fn run(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Fine-tunes the tiny BERT fixture on `data` into `out` (20 epochs, seed 3) with texts cut at
/// `max_len` tokens; returns what it printed.
fn train_tiny_bert(data: &str, out: &Path, max_len: usize) -> String {
    run(&[
        "train",
        "--data",
        data,
        "--model",
        fixtures().join("tiny-bert").to_str().unwrap(),
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--seed",
        "3",
        "--max-len",
        &max_len.to_string(),
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
}

/// `distill eval --model MODEL --data DATA --json [extra…]`, parsed.
fn eval_json(model: &Path, data: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data,
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(run(&args).trim()).unwrap()
}

/// A JSON file a run wrote.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn evaluation_truncates_texts_as_training_did() {
    let work = tempfile::tempdir().unwrap();
    let data = synthetic_review_files(work.path());
    let out = work.path().join("short");
    // 6 tokens keep [CLS], [SEP] and 4 of a review's 4-12 words: cut reviews lose sentiment words.
    train_tiny_bert(&data, &out, 6);
    let meta: Value = read_json(&out.join("text_meta.json"));
    assert_eq!(meta["max_len"], 6, "{meta}");
    let history: Vec<Value> = read_json(&out.join("history.json"));
    let last = history.last().unwrap()["val_accuracy"].as_f64().unwrap();
    let eval = eval_json(&out, &data, &[]);
    let last_loss = history.last().unwrap()["val_loss"].as_f64().unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), last, "{eval}");
    assert!(
        (eval["loss"].as_f64().unwrap() - last_loss).abs() < 1e-4,
        "{eval} vs {last_loss}"
    );
}

#[test]
fn cli_fine_tunes_a_text_encoder_and_evaluates_the_saved_model() {
    let work = tempfile::tempdir().unwrap();
    let data = synthetic_review_files(work.path());
    let out = work.path().join("teacher");
    let model = fixtures().join("tiny-bert");
    let printed = train_tiny_bert(&data, &out, 32);
    assert!(
        printed.contains("train: 320 train / 120 test texts, 2 classes"),
        "{printed}"
    );
    let history: Vec<Value> = read_json(&out.join("history.json"));
    let last = history.last().unwrap()["val_accuracy"].as_f64().unwrap();
    assert!(last > 0.9, "{last}");
    // The saved directory is self-contained (spec, weights, metadata, tokenizer) and evaluates
    // to the accuracy its last epoch reported.
    let eval = eval_json(&out, &data, &[]);
    assert_eq!(eval["samples"], 120);
    assert!(
        (eval["accuracy"].as_f64().unwrap() - last).abs() < 1e-9,
        "{eval} vs {last}"
    );
    // Image-only flags are refused by name.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args([
            "train",
            "--data",
            &data,
            "--model",
            model.to_str().unwrap(),
            "--augment",
            "--out",
        ])
        .arg(work.path().join("x"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--augment applies to images"));

    // Students over the teacher's tokenizer: a BiLSTM on labels alone (--base-model), then the
    // same seed distilled on the training texts plus a transfer set the teacher labels.
    let spec = write(
        work.path(),
        "bilstm.toml",
        b"kind = \"bilstm\"\nembedding = 16\nhidden = 12\n",
    );
    let student_args = |out: &Path| -> Vec<String> {
        [
            "--data",
            &data,
            "--epochs",
            "6",
            "--batch-size",
            "16",
            "--lr",
            "1e-2",
            "--seed",
            "5",
            "--max-len",
            "32",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let scratch = work.path().join("scratch");
    let mut args = vec![
        "train".to_string(),
        "--model".into(),
        spec.display().to_string(),
    ];
    args.extend(student_args(&scratch));
    args.extend(["--base-model".into(), out.display().to_string()]);
    let printed = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(printed.contains("320 train / 120 test texts"), "{printed}");
    let cache = work.path().join("logits");
    let distilled = work.path().join("distilled");
    let mut args = vec![
        "distill".to_string(),
        "--teacher".into(),
        out.display().to_string(),
        "--student".into(),
        spec.display().to_string(),
        "--alpha".into(),
        "0.5".into(),
        "--temperature".into(),
        "2".into(),
        "--transfer-copies".into(),
        "2".into(),
        "--logit-cache".into(),
        cache.display().to_string(),
    ];
    args.extend(student_args(&distilled));
    let printed = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        printed.contains("transfer texts (2 copies per text"),
        "{printed}"
    );
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(cached.len(), 1, "one logit cache for train + transfer set");
    for (dir, floor) in [(&scratch, 0.8), (&distilled, 0.8)] {
        let eval = eval_json(dir, &data, &[]);
        let accuracy = eval["accuracy"].as_f64().unwrap();
        assert!(accuracy > floor, "{}: {eval}", dir.display());
    }
    let timed = eval_json(&distilled, &data, &["--speed", "--threads", "1"]);
    assert!(timed["latency_ms"].as_f64().unwrap() > 0.0, "{timed}");
    assert!(timed["throughput_per_s"].as_f64().unwrap() > 0.0, "{timed}");
    assert_eq!(
        timed["weight_bytes"].as_u64().unwrap(),
        std::fs::metadata(distilled.join("model.bpk"))
            .unwrap()
            .len()
    );
    // The two arms, paired by seed: one seed gives the difference but no interval.
    let compared: Value = serde_json::from_str(&run(&[
        "compare",
        "--control",
        scratch.to_str().unwrap(),
        "--treatment",
        distilled.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let final_accuracy = |dir: &Path| {
        let history: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap())
                .unwrap();
        history.last().unwrap()["val_accuracy"].as_f64().unwrap()
    };
    assert_eq!(compared["control"]["seeds"][0], 5);
    assert_eq!(
        compared["control"]["accuracies"][0].as_f64().unwrap(),
        final_accuracy(&scratch)
    );
    let difference = 100.0 * (final_accuracy(&distilled) - final_accuracy(&scratch));
    assert!(
        (compared["paired_points"]["mean"].as_f64().unwrap() - difference).abs() < 1e-9,
        "{compared}"
    );
    assert!(compared["paired_points"]["ci95"].is_null());
    let unpaired = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["compare", "--control"])
        .arg(&scratch)
        .arg(&distilled)
        .arg("--treatment")
        .arg(&distilled)
        .output()
        .unwrap();
    assert!(!unpaired.status.success());
    assert!(String::from_utf8_lossy(&unpaired.stderr)
        .contains("--control names 2 runs but --treatment 1"));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(distilled.join("text_meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["encoder"]["kind"], "bilstm", "{meta}");
    // DistilBERT's recipe: a one-layer student from the teacher's last layer, soft targets +
    // labels + the cosine term on hidden states (the teacher runs live for those).
    let small = write(
        work.path(),
        "small.toml",
        b"kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [1]\n",
    );
    let cosine_run = work.path().join("cosine");
    let mut args = vec![
        "distill".to_string(),
        "--teacher".into(),
        out.display().to_string(),
        "--student".into(),
        small.display().to_string(),
        "--alpha".into(),
        "0.5".into(),
        "--temperature".into(),
        "2".into(),
        "--cosine-weight".into(),
        "1".into(),
        "--logit-cache".into(),
        cache.display().to_string(),
    ];
    args.extend(student_args(&cosine_run));
    run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let history: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(cosine_run.join("history.json")).unwrap())
            .unwrap();
    assert!(history.last().unwrap()["val_accuracy"].as_f64().unwrap() > 0.8);
    let state =
        std::fs::read_to_string(cosine_run.join("checkpoints/epoch-0006/state.json")).unwrap();
    assert!(state.contains("cosine=1"), "{state}");
    // A student spec without a tokenizer to read is refused by name.
    let mut args = vec![
        "train".to_string(),
        "--model".into(),
        spec.display().to_string(),
    ];
    args.extend(student_args(&work.path().join("x")));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--base-model"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn the_cosine_term_adds_its_weighted_distance_on_mapped_layers_and_spares_the_teacher() {
    // seeds and draws from the process-wide random generator (dropout)
    let _serial = common::serial();
    use distill::distill::{CacheLocation, TeacherLogits};
    use distill::losses::{mapped_hidden_cosine, HiddenStates, HiddenTerm};
    use distill::modality::text::{text_teacher_logits, LiveTextTeacher, Text, TokenizedSplit};
    use distill::train::{model_step, Objective, OptimizerConfig};

    let device = Device::default();
    let (teacher, teacher_config) = tiny_teacher(&device);
    let EncoderConfig::Transformer(bert_config) = teacher_config else {
        panic!("{teacher_config:?}")
    };
    let tokenizer =
        TextTokenizer::from_file(&fixtures().join("tiny-bert").join(bert::TOKENIZER_FILE), 32)
            .unwrap();
    let mut examples = synthetic_reviews(12, 4);
    for e in &mut examples {
        e.label %= 3;
    }
    let split = TokenizedSplit::new(&examples, &tokenizer).unwrap();
    let cached = text_teacher_logits(
        &teacher,
        "tiny",
        &split,
        CacheLocation::Memory,
        &device,
        false,
    )
    .unwrap();
    let TeacherLogits::Cached { values, .. } = &cached else {
        panic!("cached")
    };
    let values = values.clone();
    let live = LiveTextTeacher::new(cached, &teacher);
    // A one-layer student (no encoder dropout) started from the teacher's layer 0: its single
    // layer meets the teacher's last layer.
    let spec: TextModelSpec = toml::from_str(
        "kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [0]\ndropout = 0.0\n",
    )
    .unwrap();
    let teacher_bert = teacher.encoder.bert().unwrap();
    let autodiff = device.clone().autodiff();
    let (student, _) =
        TextClassifier::init(&spec, 3, Some((teacher_bert, &bert_config)), 2, &autodiff).unwrap();
    let loss = DistillLoss::Kd {
        alpha: 0.5,
        temperature: 2.0,
        t2_scaling: true,
    };
    let indices: Vec<usize> = (0..6).collect();
    let step = |objective: &Objective<LiveTextTeacher>| {
        let batch = <Text as distill::modality::Modality>::batch(&split, &indices, &autodiff, None);
        // Same dropout mask on the head in both calls; learning rate 0 leaves the weights alone.
        autodiff.seed(11);
        let mut optimizer = OptimizerConfig::default().build();
        model_step::<Text, _>(
            student.clone(),
            &mut optimizer,
            objective,
            batch,
            &indices,
            None,
            0.0,
            0.0,
            0,
            &device,
        )
        .unwrap()
        .1
    };
    let without = step(&Objective::Distill {
        loss,
        teacher: &live,
        hidden: None,
    });
    let with = step(&Objective::Distill {
        loss,
        teacher: &live,
        hidden: Some(HiddenTerm { weight: 3.0 }),
    });
    // Independent pieces: the student's states against the teacher's, plain tensors.
    let (input, _) = <Text as distill::modality::Modality>::batch(&split, &indices, &device, None);
    let student_states = student
        .valid()
        .encoder
        .bert()
        .unwrap()
        .hidden_states(&input);
    let teacher_states = teacher_bert.hidden_states(&input);
    let distance: f32 = mapped_hidden_cosine(
        &HiddenStates {
            states: student_states,
            padding: input.padding.clone(),
        },
        &teacher_states,
    )
    .unwrap()
    .into_scalar();
    assert!(
        distance > 1e-3,
        "layer 0 differs from the last layer: {distance}"
    );
    assert!(
        ((with - without) - 3.0 * distance).abs() < 1e-4,
        "{with} - {without} != 3 x {distance}"
    );
    // The teacher's cached logits are untouched by training (no gradient reaches them).
    assert_eq!(
        text_teacher_logits(
            &teacher,
            "tiny",
            &split,
            CacheLocation::Memory,
            &device,
            false
        )
        .map(|t| match t {
            TeacherLogits::Cached { values, .. } => values,
            _ => unreachable!(),
        })
        .unwrap(),
        values
    );
    // A student without hidden states cannot take the term: a clear error, not a panic.
    let cnn: TextModelSpec =
        toml::from_str("kind = \"cnn\"\nembedding = 4\nfilters = 2\nkernel_sizes = [2]\n").unwrap();
    let (cnn, _) =
        TextClassifier::init(&cnn, 3, Some((teacher_bert, &bert_config)), 2, &autodiff).unwrap();
    let batch = <Text as distill::modality::Modality>::batch(&split, &indices, &autodiff, None);
    let err = model_step::<Text, _>(
        cnn,
        &mut OptimizerConfig::default().build(),
        &Objective::Distill {
            loss,
            teacher: &live,
            hidden: Some(HiddenTerm { weight: 1.0 }),
        },
        batch,
        &indices,
        None,
        0.0,
        0.0,
        0,
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("hidden states"), "{err}");
}

#[test]
fn cli_bench_text_times_a_pretrained_encoder_and_names_bad_shapes() {
    let model = fixtures().join("tiny-bert");
    let distill = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(args)
            .output()
            .unwrap()
    };
    // 4 texts of 12 tokens on one thread, with `extra` options; the JSON it prints
    let bench = |extra: &[&str]| -> Value {
        let mut args = vec![
            "bench",
            "--text",
            model.to_str().unwrap(),
            "--batch-size",
            "4",
            "--seq-len",
            "12",
            "--threads",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = distill(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let result = bench(&["--steps", "3"]);
    let config = bert::BertConfig::from_file(&model.join(bert::CONFIG_FILE)).unwrap();
    // the encoder plus a 2-class head over its width
    let head = config.hidden_size * 2 + 2;
    assert_eq!(
        result["params"].as_u64().unwrap() as usize,
        config.num_params() + head
    );
    assert_eq!(result["batch_size"], 4);
    assert_eq!(result["seq_len"], 12);
    assert_eq!(result["threads"], 1);
    let per_batch_ms = result["spread"]["infer"][2].as_f64().unwrap();
    assert!(
        (result["infer_texts_per_s"].as_f64().unwrap() - 4e3 / per_batch_ms).abs() < 1e-6,
        "{result}"
    );
    assert!(result["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(result["layers"], "local");
    assert!(result.get("burn_layers").is_none(), "{result}");

    // --compare-burn times burn's layers first, in the same process.
    let compared = bench(&["--steps", "2", "--compare-burn"]);
    assert_eq!(compared["layers"], "local");
    assert_eq!(compared["burn_layers"]["layers"], "burn");
    for workload in ["infer", "latency", "train"] {
        let ours = compared["spread"][workload][2].as_f64().unwrap();
        let burns = compared["burn_layers"]["spread"][workload][2]
            .as_f64()
            .unwrap();
        let speedup = compared["speedup"][workload].as_f64().unwrap();
        assert!(
            (speedup - burns / ours).abs() < 1e-9,
            "{workload}: {compared}"
        );
    }

    // Longer texts than the model has positions for, and a directory that is not a model.
    let too_long = distill(&[
        "bench",
        "--text",
        model.to_str().unwrap(),
        "--seq-len",
        "33",
    ]);
    assert!(!too_long.status.success());
    let err = String::from_utf8_lossy(&too_long.stderr);
    assert!(
        err.contains("--seq-len 33") && err.contains("at most 32 tokens"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let not_a_model = distill(&["bench", "--text", empty.path().to_str().unwrap()]);
    assert!(!not_a_model.status.success());
    let err = String::from_utf8_lossy(&not_a_model.stderr);
    assert!(
        err.contains("expected a pretrained text encoder directory"),
        "{err}"
    );
}

#[test]
fn distill_run_studies_a_text_dataset_with_the_image_study_s_runner_and_report() {
    let work = tempfile::tempdir().unwrap();
    let data = synthetic_review_files(work.path());
    let student = write(
        work.path(),
        "student.toml",
        b"kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [1]\ndropout = 0.0\n",
    );
    let config = text_study_config(&data, &student);
    let config_path = write(work.path(), "study.toml", config.as_bytes());
    let out = work.path().join("study");
    let study = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let printed = study(&[]);
    assert!(printed.contains("== teacher"), "{printed}");
    assert!(printed.contains("transfer set:"), "{printed}");

    // The image study's layout: teacher, scratch and distilled runs per seed, the logit cache.
    for dir in [
        "teacher",
        "scratch/seed-5",
        "scratch/seed-6",
        "distilled/a0.5-T2-t2/seed-5",
        "distilled/a0.5-T2-t2/seed-6",
    ] {
        assert!(out.join(dir).join("text_meta.json").is_file(), "{dir}");
    }
    assert!(
        std::fs::read_dir(out.join("teacher-logits"))
            .unwrap()
            .count()
            > 0
    );
    let scratch_history: Vec<Value> = read_json(&out.join("scratch/seed-5/history.json"));
    let distilled_history: Vec<Value> =
        read_json(&out.join("distilled/a0.5-T2-t2/seed-5/history.json"));
    assert_eq!((scratch_history.len(), distilled_history.len()), (3, 2));

    // The report holds the test accuracy each saved model evaluates to, paired over the seeds.
    let report: Value = read_json(&out.join("report.json"));
    let teacher_accuracy = report["teacher"]["accuracy"].as_f64().unwrap();
    assert!(teacher_accuracy > 0.9, "{report}");
    let evaluated = eval_json(&out.join("scratch/seed-6"), &data, &[]);
    assert_eq!(
        report["scratch"]["accuracies"][1].as_f64().unwrap(),
        evaluated["accuracy"].as_f64().unwrap()
    );
    assert_eq!(report["distilled"][0]["paired_diff"]["n"], 2, "{report}");
    assert!(report["dataset"]["shape"].is_null(), "{report}");
    assert_eq!(report["dataset"]["max_tokens"], 32);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        markdown.contains("120 test texts of at most 32 tokens"),
        "{markdown}"
    );
    assert!(markdown.contains("texts/s"), "{markdown}");
    assert!(
        markdown.contains("Students trained 3 epochs (distilled: 2)"),
        "{markdown}"
    );
    // The control starts from the teacher's layer, so it is not "from scratch".
    assert!(
        markdown.contains("| student on labels alone (from the teacher's layers) |"),
        "{markdown}"
    );

    // Run again: every run is finished, nothing retrains, the report is the same.
    let again = study(&[]);
    assert!(again.contains("already complete"), "{again}");
    let second: Value = read_json(&out.join("report.json"));
    for key in ["accuracies", "paired_diff"] {
        assert_eq!(second["distilled"][0][key], report["distilled"][0][key]);
    }

    // Students in two worker processes (the teacher and its logits reused from the first study):
    // the same runs, bit for bit.
    let parallel = work.path().join("parallel");
    std::fs::create_dir_all(&parallel).unwrap();
    for shared in ["teacher", "teacher-logits"] {
        copy_dir(&out.join(shared), &parallel.join(shared));
    }
    let printed = run(&[
        "run",
        "--config",
        config_path.to_str().unwrap(),
        "--out",
        parallel.to_str().unwrap(),
        "--quiet",
        "--jobs",
        "2",
    ]);
    assert!(printed.contains("in 2 parallel jobs"), "{printed}");
    let third: Value = read_json(&parallel.join("report.json"));
    assert_eq!(
        third["scratch"]["accuracies"],
        report["scratch"]["accuracies"]
    );
    assert_eq!(
        third["distilled"][0]["accuracies"],
        report["distilled"][0]["accuracies"]
    );
    for job in ["job-1.log", "job-2.log"] {
        let log = std::fs::read_to_string(parallel.join("logs").join(job)).unwrap();
        assert_eq!(log.matches(", seed ").count(), 2, "{job}: {log}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_student_initialised_from_teacher_layers_trains_those_layers() {
    let work = tempfile::tempdir().unwrap();
    let data = synthetic_review_files(work.path());
    let teacher_dir = work.path().join("teacher");
    train_tiny_bert(&data, &teacher_dir, 32);
    let spec = write(
        work.path(),
        "student.toml",
        b"kind = \"transformer\"\nlayers = 1\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [1]\ndropout = 0.0\n",
    );
    let student_dir = work.path().join("student");
    run(&[
        "train",
        "--data",
        &data,
        "--model",
        spec.to_str().unwrap(),
        "--base-model",
        teacher_dir.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--seed",
        "1",
        "--max-len",
        "32",
        "--quiet",
        "--out",
        student_dir.to_str().unwrap(),
    ]);
    let device = Device::default();
    let (teacher, _) = distill::modality::text::load_text_model(&teacher_dir, &device).unwrap();
    let (student, _) = distill::modality::text::load_text_model(&student_dir, &device).unwrap();
    let tokenizer = TextTokenizer::from_file(&teacher_dir.join(bert::TOKENIZER_FILE), 32).unwrap();
    let ids: Vec<Vec<u32>> = ["a great film", "a dull and boring movie"]
        .iter()
        .map(|t| tokenizer.encode(t).unwrap())
        .collect();
    let tokens = batch(&tokenizer, &ids, &device);
    let teacher_states = teacher.encoder.bert().unwrap().hidden_states(&tokens);
    let student_bert = student.encoder.bert().unwrap();
    // The student started as the teacher's embeddings and layer 1; two epochs at 1e-2 must have
    // moved both (a copy that stayed on the teacher's untracked tensors would get no gradient).
    let moved = |a: Tensor<3>, b: Tensor<3>| -> f64 {
        values(a)
            .iter()
            .zip(values(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let student_states = student_bert.hidden_states(&tokens);
    let embeddings = moved(student_states[0].clone(), teacher_states[0].clone());
    let layer = moved(
        student_bert.layer_forward(0, teacher_states[1].clone(), &tokens.padding),
        teacher_states[2].clone(),
    );
    assert!(embeddings > 1e-3, "embeddings unchanged: {embeddings}");
    assert!(layer > 1e-3, "layer unchanged: {layer}");
}

/// A two-seed `distill run` config over `data`: the tiny BERT fine-tuned as teacher, `student`
/// trained 3 epochs on labels and distilled 2 epochs with a transfer set and the cosine term.
fn text_study_config(data: &str, student: &Path) -> String {
    format!(
        r#"data = "{data}"
seeds = 2

[teacher]
model = "{teacher}"
epochs = 20
batch_size = 16

[teacher.optimizer]
learning_rate = 1e-2

[student]
model = "{student}"
epochs = 3
distilled_epochs = 2

[training]
batch_size = 16
seed = 5

[training.optimizer]
learning_rate = 1e-2

[text]
max_len = 32
transfer_copies = 1
cosine_weight = 0.5

[sweep]
alpha = [0.5]
temperature = [2.0]
"#,
        teacher = fixtures().join("tiny-bert").display(),
        student = student.display(),
    )
}

#[test]
fn a_text_study_whose_student_does_not_fit_the_teacher_stops_before_training_it() {
    let work = tempfile::tempdir().unwrap();
    let data = synthetic_review_files(work.path());
    // the tiny BERT has layers 0 and 1
    let student = write(
        work.path(),
        "student.toml",
        b"kind = \"transformer\"\nlayers = 2\nwidth = 8\nheads = 2\nffn = 16\nteacher_layers = [0, 2]\n",
    );
    let config = write(
        work.path(),
        "study.toml",
        text_study_config(&data, &student).as_bytes(),
    );
    let out = work.path().join("study");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`student.model`"), "{stderr}");
    assert!(stderr.contains("layer 2 does not exist"), "{stderr}");
    assert!(
        !out.join("teacher").exists(),
        "the teacher was trained first"
    );
}
