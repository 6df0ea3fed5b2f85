//! # distill — knowledge distillation of image and text classifiers, in Rust
//!
//! A small *student* network is trained to match a large, already trained *teacher* (its
//! temperature-softened logits) as well as the true labels:
//!
//! ```text
//! loss = alpha * CE(labels, student) + (1 - alpha) * s * KL(softmax(teacher / T) || softmax(student / T))
//! ```
//!
//! The crate is organised one module per concept:
//!
//! | module | what it holds |
//! |---|---|
//! | [`data`] | datasets (CIFAR-10 binary, MNIST/Fashion-MNIST IDX, image folders, an embedded default; labelled text and its tokenizer), batching, augmentation |
//! | [`models`] | a Keras-like layer spec, the reference model zoo, shape/parameter/FLOP summaries, checkpoints; a BERT encoder for text |
//! | [`losses`] | cross-entropy and the distillation losses on logits (`kd`, `mse`, `dkd`) |
//! | [`methods`] | feature distillation methods (FitNets, AT, RKD, CRD), one file each, and the teacher's taps |
//! | [`train`] | the one training loop (teacher, scratch or distilled student, any modality) |
//! | [`optimizer`] | Adam and AdamW with a one-pass update per parameter on Flex (burn's elsewhere) |
//! | [`modality`] | what the loop needs from a kind of data: images (CNNs) or text (BERT-family classifiers) |
//! | [`distill`] | training a student from a frozen teacher, with the teacher-logit cache |
//! | [`experiment`] | `distill run`: teacher, scratch student and the distillation sweep as one resumable job |
//! | [`report`] | the report: Markdown, JSON and plots answering "was it worth it?" |
//! | [`stats`] | paired-seed comparisons: mean, sample std, Student-t 95% intervals of per-seed differences |
//! | [`progress`] | progress bars (indicatif, on stderr, hidden when it is not a terminal) |
//! | [`bench`](mod@bench) | `distill bench`: step times and throughput of the reference workloads |
//! | [`kernels`] | local CPU kernels (conv + bias + leaky ReLU, max pooling, dropout) behind burn's backend extension, used on Flex |
//! | [`backend`] | device selection (Flex by default; LibTorch, CUDA, WGPU behind cargo features) |
//! | [`cli`] | the `distill` command line, a thin layer over the above |
//!
//! Everything runs on [burn](https://burn.dev) 0.22; models and training code are backend-generic.

pub mod backend;
pub mod bench;
pub mod classifier;
pub mod cli;
pub mod data;
pub mod distill;
pub mod distributed;
pub mod experiment;
pub mod kernels;
pub mod losses;
pub mod methods;
pub mod modality;
pub mod models;
pub mod onnx;
pub mod optimizer;
pub mod progress;
pub mod report;
pub mod stats;
pub mod train;
