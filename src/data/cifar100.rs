//! The official CIFAR-100 binary layout, as extracted from `cifar-100-binary.tar.gz`.
//!
//! `train.bin` (50,000 images) and `test.bin` (10,000) are sequences of 3074-byte records: one
//! coarse-label byte (one of 20 superclasses), one fine-label byte (one of 100 classes), then a
//! 32×32 image as 1024 red, 1024 green and 1024 blue bytes — already the `C×H×W` order of
//! [`Split`]. The class names are in `fine_label_names.txt` and `coarse_label_names.txt`, one per
//! line in label order.
//!
//! Every record carries both labels; a dataset is built with one of them, chosen by [`Labels`]
//! (`cifar100[:DIR]` for the fine labels, `cifar100-coarse[:DIR]` for the coarse ones). Both
//! labels of every record are checked whichever is used, since either out of range means a
//! corrupt file.

use std::path::{Path, PathBuf};

use super::cifar::{self, read_existing};
use super::{DataError, Dataset, Split};

/// The directory the official tarball extracts to.
pub const SUBDIR: &str = "cifar-100-binary";
/// The training file.
pub const TRAIN_FILE: &str = "train.bin";
/// The test file.
pub const TEST_FILE: &str = "test.bin";
/// The fine class names: one per line, in label order.
pub const FINE_NAMES_FILE: &str = "fine_label_names.txt";
/// The coarse class (superclass) names: one per line, in label order.
pub const COARSE_NAMES_FILE: &str = "coarse_label_names.txt";
/// Every file of the layout: the two splits and both class-name files.
pub const FILES: [&str; 4] = [TRAIN_FILE, TEST_FILE, FINE_NAMES_FILE, COARSE_NAMES_FILE];
/// Number of fine classes.
pub const FINE_CLASSES: usize = 100;
/// Number of coarse classes (superclasses).
pub const COARSE_CLASSES: usize = 20;
/// Image shape, `C×H×W`.
pub const SHAPE: [usize; 3] = [3, 32, 32];
/// Bytes per record: the coarse label, the fine label, then the image.
pub const RECORD: usize = 2 + 3 * 32 * 32;

/// Which of the two labels of every CIFAR-100 record a dataset is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Labels {
    /// The 100 fine classes (`cifar100`), the usual benchmark.
    Fine,
    /// The 20 coarse superclasses (`cifar100-coarse`).
    Coarse,
}

impl Labels {
    /// Number of classes: 100 fine or 20 coarse.
    pub fn num_classes(self) -> usize {
        match self {
            Labels::Fine => FINE_CLASSES,
            Labels::Coarse => COARSE_CLASSES,
        }
    }

    /// The file holding the class names.
    pub fn names_file(self) -> &'static str {
        match self {
            Labels::Fine => FINE_NAMES_FILE,
            Labels::Coarse => COARSE_NAMES_FILE,
        }
    }

    /// The dataset's name, as its spec spells it: `cifar100` or `cifar100-coarse`.
    pub fn dataset_name(self) -> &'static str {
        match self {
            Labels::Fine => "cifar100",
            Labels::Coarse => "cifar100-coarse",
        }
    }

    /// `fine` or `coarse`, for messages.
    fn word(self) -> &'static str {
        match self {
            Labels::Fine => "fine",
            Labels::Coarse => "coarse",
        }
    }

    /// Position of this label in a record.
    fn offset(self) -> usize {
        match self {
            Labels::Coarse => 0,
            Labels::Fine => 1,
        }
    }

    /// Position of this label in a record, in words.
    fn which_byte(self) -> &'static str {
        match self {
            Labels::Coarse => "the first byte",
            Labels::Fine => "the second byte",
        }
    }
}

/// Resolves the directory holding the `.bin` files: `dir` itself or `dir/cifar-100-binary`.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: format!("a directory holding the CIFAR-100 binary files (or their parent directory with {SUBDIR}/)"),
        });
    }
    if dir.join(TEST_FILE).is_file() || !dir.join(SUBDIR).is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Ok(dir.join(SUBDIR))
    }
}

/// Loads CIFAR-100 from the directory of the `.bin` files or its parent, labelled with the fine
/// or the coarse labels. Only the class-name file of the chosen labels is read.
pub fn load(dir: &Path, labels: Labels) -> Result<Dataset, DataError> {
    let dir = resolve_dir(dir)?;
    let hint = cifar10_hint(&dir);
    let names_path = dir.join(labels.names_file());
    let names = read_existing(
        &names_path,
        &format!(
            "the CIFAR-100 {} class-name file ({} names, one per line){hint}",
            labels.word(),
            labels.num_classes()
        ),
    )?;
    let classes = parse_classes(&names, &names_path, labels)?;
    let train = read_split(&dir.join(TRAIN_FILE), "training", labels, hint)?;
    let test = read_split(&dir.join(TEST_FILE), "test", labels, hint)?;
    Ok(Dataset::new(labels.dataset_name(), classes, train, test))
}

/// Reads and parses one of the two `.bin` files; `split` (`training` or `test`) and `hint` are
/// for the error when it is missing.
fn read_split(path: &Path, split: &str, labels: Labels, hint: &str) -> Result<Split, DataError> {
    let expected = format!("the CIFAR-100 {split} images ({RECORD}-byte binary records){hint}");
    let bytes = read_existing(path, &expected)?;
    parse_batch(&bytes, path, labels)
}

/// A note for "not found" errors when `dir` holds the CIFAR-10 layout instead (an easy mix-up:
/// both come from the same site as `cifar-*-binary.tar.gz`), else nothing.
fn cifar10_hint(dir: &Path) -> &'static str {
    if dir.join(cifar::TEST_FILE).is_file() || dir.join(cifar::SUBDIR).is_dir() {
        "; this directory holds the CIFAR-10 binary layout, which `cifar10:DIR` reads"
    } else {
        ""
    }
}

/// Parses `fine_label_names.txt` or `coarse_label_names.txt`: one class name per line, blank
/// lines ignored, surrounding whitespace trimmed, and exactly as many names as `labels` has
/// classes (100 or 20). `path` only names the source in errors.
pub fn parse_classes(bytes: &[u8], path: &Path, labels: Labels) -> Result<Vec<String>, DataError> {
    let classes = cifar::parse_classes(bytes, path)?;
    if classes.len() != labels.num_classes() {
        return Err(DataError::format(
            path,
            format!(
                "{} CIFAR-100 {} class names, one per line",
                labels.num_classes(),
                labels.word()
            ),
            format!("{} names", classes.len()),
        ));
    }
    Ok(classes)
}

/// Parses the contents of `train.bin` or `test.bin`: a non-zero number of [`RECORD`]-byte
/// records, each a coarse label below 20, a fine label below 100 and a 3×32×32 image, into a
/// split labelled with `labels`. Both labels of every record are checked; the error for one out
/// of range names the record (counting from 0 within this file) and the value. `path` only names
/// the source in errors.
pub fn parse_batch(bytes: &[u8], path: &Path, labels: Labels) -> Result<Split, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::format(
            path,
            format!(
                "a non-zero multiple of {RECORD} bytes (1 coarse-label byte + 1 fine-label byte + 3×32×32 pixels per record)"
            ),
            format!(
                "{} bytes ({} records and {} bytes left over)",
                bytes.len(),
                bytes.len() / RECORD,
                bytes.len() % RECORD
            ),
        ));
    }
    for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
        for kind in [Labels::Coarse, Labels::Fine] {
            let label = record[kind.offset()];
            if usize::from(label) >= kind.num_classes() {
                return Err(DataError::format(
                    path,
                    format!(
                        "{} labels below {} ({} of each {RECORD}-byte record)",
                        kind.word(),
                        kind.num_classes(),
                        kind.which_byte()
                    ),
                    format!(
                        "{} label {label} in record {index} (counting from 0)",
                        kind.word()
                    ),
                ));
            }
        }
    }
    let records = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(records * (RECORD - 2));
    let mut split_labels = Vec::with_capacity(records);
    for record in bytes.chunks_exact(RECORD) {
        split_labels.push(u32::from(record[labels.offset()]));
        images.extend_from_slice(&record[2..]);
    }
    Ok(Split {
        shape: SHAPE,
        images,
        labels: split_labels,
    })
}
