//! Datasets, batching and augmentation.
//!
//! A dataset is chosen by a [`DataSpec`] string and [`load`]ed into memory as bytes: every split
//! holds `N×C×H×W` pixels (`C×H×W` per image, contiguous) and one label per image. Batches are
//! built on demand as `f32` tensors in `[0, 1]`.
//!
//! | spec | source |
//! |---|---|
//! | `embedded` | 6,000 + 1,000 Fashion-MNIST images compiled into the binary ([`embedded`]) |
//! | `cifar10[:DIR]` | the official CIFAR-10 binary files ([`cifar`]) |
//! | `cifar100[:DIR]` | the official CIFAR-100 binary files, with the 100 fine labels ([`cifar100`]) |
//! | `cifar100-coarse[:DIR]` | the same files, with the 20 coarse labels (superclasses) |
//! | `mnist[:DIR]`, `fashion-mnist[:DIR]` | IDX files, gzipped or not ([`idx`]) |
//! | `folder:DIR` | `DIR/{train,test}/<class>/*.{png,jpg,jpeg}` ([`folder`]) |
//!
//! Without a directory, `cifar10`, `cifar100`, `cifar100-coarse` (the same files as `cifar100`),
//! `mnist` and `fashion-mnist` are taken from the cache (`$DISTILL_DATA`, else
//! `~/.cache/distill`) and downloaded there first when absent (`DISTILL_MIRROR` overrides the
//! base URL; see [`download`]).
//!
//! Text datasets (`rotten-tomatoes`, `text:FILE`) live in [`text`] and are tokenised by
//! [`tokenizer`] into padded [`tokenizer::TokenBatch`]es.
//!
//! Everything random — epoch order ([`batch_order`]), validation split
//! ([`Split::split_off_validation`]) and augmentation ([`Split::batch`]) — is driven by explicit
//! seeds through ChaCha8, so a run (or a resumed run) is reproducible.

pub mod augment;
pub mod cifar;
pub mod cifar100;
pub mod download;
pub mod embedded;
mod error;
pub mod folder;
pub mod idx;
mod progress;
pub mod text;
pub mod tokenizer;
pub mod transfer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

pub use augment::{draw_mix, Augmentation, LabelMix, Mix};
pub use error::DataError;

/// MNIST class names, in label order.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which dataset to load, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// `embedded`: the Fashion-MNIST subset compiled into the binary.
    Embedded,
    /// `cifar10` (cached download) or `cifar10:DIR`.
    Cifar10(Option<PathBuf>),
    /// `cifar100` (cached download) or `cifar100:DIR`: CIFAR-100 with its 100 fine labels.
    Cifar100(Option<PathBuf>),
    /// `cifar100-coarse` (cached download) or `cifar100-coarse:DIR`: CIFAR-100 with its 20
    /// coarse labels (superclasses).
    Cifar100Coarse(Option<PathBuf>),
    /// `mnist` (cached download) or `mnist:DIR`.
    Mnist(Option<PathBuf>),
    /// `fashion-mnist` (cached download) or `fashion-mnist:DIR`.
    FashionMnist(Option<PathBuf>),
    /// `folder:DIR`, an image-folder dataset.
    Folder(PathBuf),
}

impl FromStr for DataSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DataError::Spec {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        // split at the first colon only, so that the directory may itself contain colons
        let (kind, dir) = match s.split_once(':') {
            Some((kind, "")) => return Err(err(&format!("no directory after `{kind}:`"))),
            Some((kind, dir)) => (kind, Some(PathBuf::from(dir))),
            None => (s, None),
        };
        match (kind, dir) {
            ("embedded", None) => Ok(DataSpec::Embedded),
            ("embedded", Some(_)) => Err(err("`embedded` takes no directory")),
            ("cifar10", dir) => Ok(DataSpec::Cifar10(dir)),
            ("cifar100", dir) => Ok(DataSpec::Cifar100(dir)),
            ("cifar100-coarse", dir) => Ok(DataSpec::Cifar100Coarse(dir)),
            ("mnist", dir) => Ok(DataSpec::Mnist(dir)),
            ("fashion-mnist", dir) => Ok(DataSpec::FashionMnist(dir)),
            ("folder", Some(dir)) => Ok(DataSpec::Folder(dir)),
            ("folder", None) => Err(err("`folder` needs a directory, as `folder:DIR`")),
            _ => Err(err("not a known dataset")),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_dir = |f: &mut fmt::Formatter<'_>, kind: &str, dir: &Option<PathBuf>| match dir {
            Some(dir) => write!(f, "{kind}:{}", dir.display()),
            None => f.write_str(kind),
        };
        match self {
            DataSpec::Embedded => f.write_str("embedded"),
            DataSpec::Cifar10(dir) => with_dir(f, "cifar10", dir),
            DataSpec::Cifar100(dir) => with_dir(f, "cifar100", dir),
            DataSpec::Cifar100Coarse(dir) => with_dir(f, "cifar100-coarse", dir),
            DataSpec::Mnist(dir) => with_dir(f, "mnist", dir),
            DataSpec::FashionMnist(dir) => with_dir(f, "fashion-mnist", dir),
            DataSpec::Folder(dir) => write!(f, "folder:{}", dir.display()),
        }
    }
}

/// Loads a dataset fully into memory, downloading it into the cache first when the spec names
/// no directory. Slow steps (downloads, extraction, decoding image folders) show a progress bar
/// on stderr when it is a terminal.
pub fn load(spec: &DataSpec) -> Result<Dataset, DataError> {
    match spec {
        DataSpec::Embedded => embedded::load(),
        DataSpec::Cifar10(dir) => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => download::ensure_cifar10()?,
            };
            cifar::load(&dir)
        }
        DataSpec::Cifar100(dir) => load_cifar100(dir, cifar100::Labels::Fine),
        DataSpec::Cifar100Coarse(dir) => load_cifar100(dir, cifar100::Labels::Coarse),
        DataSpec::Mnist(dir) => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => download::ensure_idx(&download::MNIST)?,
            };
            idx::load_dir(&dir, "mnist", &MNIST_CLASSES)
        }
        DataSpec::FashionMnist(dir) => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => download::ensure_idx(&download::FASHION_MNIST)?,
            };
            idx::load_dir(&dir, "fashion-mnist", &FASHION_MNIST_CLASSES)
        }
        DataSpec::Folder(dir) => folder::load(dir),
    }
}

/// CIFAR-100 from `dir`, or from the cache (downloaded first when absent) without one.
fn load_cifar100(dir: &Option<PathBuf>, labels: cifar100::Labels) -> Result<Dataset, DataError> {
    let dir = match dir {
        Some(dir) => dir.clone(),
        None => download::ensure_cifar100()?,
    };
    cifar100::load(&dir, labels)
}

/// A dataset in memory: class names, image shape and the train and test splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Short name (`embedded`, `cifar10`, `cifar100`, `cifar100-coarse`, `mnist`,
    /// `fashion-mnist`, or a folder's name).
    pub name: String,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Image shape, `[C, H, W]`, shared by both splits.
    pub shape: [usize; 3],
    /// Training images.
    pub train: Split,
    /// Test images.
    pub test: Split,
}

/// The summary printed by `distill data info` (and the dataset line of a study's report).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataInfo {
    /// Dataset name.
    pub name: String,
    /// Number of training examples.
    pub train: usize,
    /// Number of test examples.
    pub test: usize,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Image shape, `[C, H, W]`; none for texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<[usize; 3]>,
    /// Most tokens kept per text; none for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
}

impl DataInfo {
    /// What the examples are, for prose: `images of shape [3, 32, 32]`, `texts of at most 64
    /// tokens`.
    pub fn examples(&self) -> String {
        match (self.shape, self.max_tokens) {
            (Some(shape), _) => format!("images of shape {shape:?}"),
            (None, Some(tokens)) => format!("texts of at most {tokens} tokens"),
            (None, None) => "examples".to_string(),
        }
    }

    /// Unit of an inference throughput: `img/s` or `texts/s`.
    pub fn throughput_unit(&self) -> &'static str {
        if self.shape.is_some() {
            "img/s"
        } else {
            "texts/s"
        }
    }
}

impl Dataset {
    /// Assembles a dataset from two splits of one shape.
    ///
    /// # Panics
    /// If the splits' shapes differ: loaders check this against the files first, so it is a bug.
    pub fn new(name: impl Into<String>, classes: Vec<String>, train: Split, test: Split) -> Self {
        assert_eq!(
            train.shape, test.shape,
            "train and test splits of one dataset must share a shape"
        );
        Dataset {
            name: name.into(),
            classes,
            shape: train.shape,
            train,
            test,
        }
    }

    /// Sizes, classes and shape.
    pub fn info(&self) -> DataInfo {
        DataInfo {
            name: self.name.clone(),
            train: self.train.len(),
            test: self.test.len(),
            classes: self.classes.clone(),
            shape: Some(self.shape),
            max_tokens: None,
        }
    }
}

/// One split of a dataset: images as bytes plus their labels.
#[derive(Clone, PartialEq)]
pub struct Split {
    /// Shape of every image, `[C, H, W]`.
    pub shape: [usize; 3],
    /// `N×C×H×W` pixel bytes, image after image, each in `C×H×W` order.
    pub images: Vec<u8>,
    /// One label per image, each below the number of classes.
    pub labels: Vec<u32>,
}

// Not derived: a derived Debug would print megabytes of pixels.
impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("shape", &self.shape)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image, `C·H·W`.
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The `C×H×W` bytes of image `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.image_size();
        &self.images[i * size..(i + 1) * size]
    }

    /// Number of images per label, for labels `0..num_classes`.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// SHA-256 (hex) of the shape, pixels and labels: equal fingerprints mean equal splits, in
    /// the same order. Used to key caches of per-image results such as teacher logits.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        // a version tag, so that a change of this encoding cannot collide with an old key
        hasher.update(b"distill-split-v1");
        for d in self.shape {
            hasher.update((d as u64).to_le_bytes());
        }
        hasher.update((self.len() as u64).to_le_bytes());
        hasher.update(&self.images);
        for &l in &self.labels {
            hasher.update(l.to_le_bytes());
        }
        hex(&hasher.finalize())
    }

    /// The images at `indices` (in that order; repeats allowed) as a new split.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Split {
            shape: self.shape,
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Moves about `fraction` of the images into a returned validation split, keeping the rest.
    ///
    /// The split is stratified — each label contributes in proportion to its count (largest
    /// remainders decide the rounding) — and which images go is chosen by a ChaCha8 RNG seeded
    /// with `seed`. Both parts keep the original relative order of their images.
    ///
    /// Fails when `fraction` is not strictly between 0 and 1 or would leave either part empty.
    pub fn split_off_validation(&mut self, fraction: f64, seed: u64) -> Result<Split, DataError> {
        let n = self.len();
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::Validation(format!(
                "fraction must be strictly between 0 and 1, found {fraction}"
            )));
        }
        let wanted = (n as f64 * fraction).round() as usize;
        if wanted == 0 || wanted >= n {
            return Err(DataError::Validation(format!(
                "fraction {fraction} of {n} images gives {wanted} validation and {} training images; both must be at least 1",
                n.saturating_sub(wanted)
            )));
        }

        // Shuffle, then group by label (stable sort keeps the shuffled order within a label).
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut seeded_rng(Stream::Validation, seed, 0));
        order.sort_by_key(|&i| self.labels[i]);
        let num_labels = self.labels.iter().max().map_or(0, |&m| m as usize + 1);
        let counts = self.class_counts(num_labels);

        // Quota per label: floor of its exact share, then one more for the largest remainders
        // (ties to the lower label) until the quotas add up to `wanted`.
        let exact: Vec<f64> = counts
            .iter()
            .map(|&c| c as f64 * wanted as f64 / n as f64)
            .collect();
        let mut quota: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..num_labels).collect();
        by_remainder.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let missing = wanted - quota.iter().sum::<usize>();
        for &label in by_remainder.iter().take(missing) {
            quota[label] += 1;
        }

        let mut is_validation = vec![false; n];
        let mut start = 0;
        for (label, &count) in counts.iter().enumerate() {
            for &i in &order[start..start + quota[label]] {
                is_validation[i] = true;
            }
            start += count;
        }
        let (validation, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| is_validation[i]);
        let validation_split = self.subset(&validation);
        *self = self.subset(&train);
        Ok(validation_split)
    }

    /// The images at `indices` as `f32` in `[0, 1]` (byte / 255), shaped `[B, C, H, W]`, and
    /// their labels as `Int` `[B]`.
    ///
    /// With `augment = Some((augmentation, aug_seed))`, image `i` is transformed with a ChaCha8
    /// RNG seeded from `(aug_seed, i)` — `i` being the image's index in this split — so the
    /// result depends neither on batch composition nor on thread timing. Pass a different
    /// `aug_seed` each epoch (e.g. [`augmentation_seed`]) to get fresh transforms.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn batch(
        &self,
        indices: &[usize],
        device: &Device,
        augment: Option<(&Augmentation, u64)>,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let [c, h, w] = self.shape;
        let mut pixels = Vec::with_capacity(indices.len() * self.image_size());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let image = self.image(i);
            match augment {
                Some((aug, seed)) if !aug.is_identity() => match view_of(aug, seed, i) {
                    Some(view) => self.extend_view_pixels(&mut pixels, i, view, aug),
                    None => {
                        let mut rng = seeded_rng(Stream::Augment, seed, i as u64);
                        let out = aug.apply(image, self.shape, &mut rng);
                        pixels.extend(out.iter().map(|&v| f32::from(v) / 255.0));
                    }
                },
                _ => pixels.extend(image.iter().map(|&v| f32::from(v) / 255.0)),
            }
            labels.push(i64::from(self.labels[i]));
        }
        let b = indices.len();
        (
            Tensor::from_data(TensorData::new(pixels, [b, c, h, w]), device),
            Tensor::from_data(TensorData::new(labels, [b]), device),
        )
    }

    /// View `view` of image `index` under `aug` (see [`Augmentation::views`]): the same bytes
    /// whatever the run seed or epoch, so a teacher's logits for it can be computed once.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn view_image(&self, index: usize, view: usize, aug: &Augmentation) -> Vec<u8> {
        let mut rng = keyed_rng(Stream::View, aug.view_seed, index as u64, view as u64);
        aug.apply(self.image(index), self.shape, &mut rng)
    }

    /// The blend of view `view` of image `index` when `aug` mixes views (see
    /// [`Augmentation::mixup`]), drawn from the view seed alone like the view itself.
    pub fn view_mix(&self, index: usize, view: usize, aug: &Augmentation) -> Option<Mix> {
        let alpha = aug.mixup?;
        let mut rng = keyed_rng(Stream::Mix, aug.view_seed, index as u64, view as u64);
        Some(draw_mix(alpha, self.len(), &mut rng))
    }

    /// The label side of [`Split::batch`] under mixup views, for the images at `indices` showing
    /// `views` (as [`view_of`] chose them): `None` unless `aug` blends views.
    pub fn label_mix(
        &self,
        indices: &[usize],
        views: &[usize],
        aug: &Augmentation,
    ) -> Option<LabelMix> {
        let mixes = indices
            .iter()
            .zip(views)
            .map(|(&i, &v)| self.view_mix(i, v, aug))
            .collect::<Option<Vec<Mix>>>()?;
        Some(LabelMix {
            partners: mixes.iter().map(|m| self.labels[m.partner]).collect(),
            lambdas: mixes.iter().map(|m| m.lambda).collect(),
        })
    }

    /// Appends view `view` of image `index` as the model sees it (scaled to `[0, 1]`): the view
    /// itself, or blended with its partner's view of the same number under mixup.
    fn extend_view_pixels(
        &self,
        pixels: &mut Vec<f32>,
        index: usize,
        view: usize,
        aug: &Augmentation,
    ) {
        let own = self.view_image(index, view, aug);
        match self.view_mix(index, view, aug) {
            None => pixels.extend(own.iter().map(|&v| f32::from(v) / 255.0)),
            Some(Mix { partner, lambda }) => {
                let other = self.view_image(partner, view, aug);
                pixels.extend(own.iter().zip(&other).map(|(&a, &b)| {
                    (lambda * f32::from(a) + (1.0 - lambda) * f32::from(b)) / 255.0
                }));
            }
        }
    }

    /// The given views of the images at `indices` (pairwise), as [`Split::batch`] shapes them.
    /// Used to build the augmented-view teacher-logit cache.
    ///
    /// # Panics
    /// If the slices differ in length or an index is out of range.
    pub fn view_batch(
        &self,
        indices: &[usize],
        views: &[usize],
        aug: &Augmentation,
        device: &Device,
    ) -> Tensor<4> {
        assert_eq!(indices.len(), views.len(), "one view per index");
        let [c, h, w] = self.shape;
        let mut pixels = Vec::with_capacity(indices.len() * self.image_size());
        for (&i, &v) in indices.iter().zip(views) {
            self.extend_view_pixels(&mut pixels, i, v, aug);
        }
        Tensor::from_data(TensorData::new(pixels, [indices.len(), c, h, w]), device)
    }
}

/// Which of its fixed views image `index` shows in the epoch whose augmentation seed is
/// `aug_seed`, or `None` when `aug` draws fresh transforms (no `views`). Paired runs (same seed)
/// get the same views, whatever their objective.
pub fn view_of(aug: &Augmentation, aug_seed: u64, index: usize) -> Option<usize> {
    use rand::RngExt;
    let k = aug.views.filter(|_| !aug.is_identity())?;
    Some(seeded_rng(Stream::ViewChoice, aug_seed, index as u64).random_range(0..k.max(1)))
}

/// The augmentation seed for `epoch` of a run seeded with `seed`: a convenience for
/// [`Split::batch`], so each epoch sees different (but reproducible) transforms.
pub fn augmentation_seed(seed: u64, epoch: usize) -> u64 {
    // SplitMix64 finaliser over the pair: nearby (seed, epoch) pairs give unrelated seeds
    let mut z = seed
        ^ (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The batches of one epoch: `0..len` shuffled by a ChaCha8 RNG seeded from `(seed, epoch)`, or
/// in order when `shuffle` is false, cut into batches of `batch_size` (the last may be smaller).
/// Keyed by epoch, so a run resumed at epoch `e` sees the same order as an uninterrupted one.
///
/// # Panics
/// If `batch_size` is 0.
pub fn batch_order(
    len: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    assert!(batch_size > 0, "batch_size must be at least 1");
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut seeded_rng(Stream::Shuffle, seed, epoch as u64));
    }
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Independent random streams, so that e.g. the shuffle of epoch 3 and the augmentation of
/// image 3 never share an RNG state even under the same seed.
#[derive(Clone, Copy)]
enum Stream {
    Shuffle = 1,
    Augment = 2,
    Validation = 3,
    View = 4,
    ViewChoice = 5,
    Mix = 6,
}

/// A ChaCha8 RNG whose 256-bit key is `(seed, counter, stream)`.
fn seeded_rng(stream: Stream, seed: u64, counter: u64) -> ChaCha8Rng {
    keyed_rng(stream, seed, counter, 0)
}

/// A ChaCha8 RNG whose 256-bit key is `(seed, counter, stream, extra)`.
fn keyed_rng(stream: Stream, seed: u64, counter: u64, extra: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&counter.to_le_bytes());
    key[16..24].copy_from_slice(&(stream as u64).to_le_bytes());
    key[24..].copy_from_slice(&extra.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Checks that every label is below `num_classes`; `path` names the labels' file in the error.
pub(crate) fn check_labels(
    labels: &[u32],
    num_classes: usize,
    path: &Path,
) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= num_classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            classes: num_classes,
        }),
        None => Ok(()),
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
