//! The official CIFAR-10 binary layout, as extracted from `cifar-10-binary.tar.gz`.
//!
//! Each `.bin` file is a sequence of 3073-byte records: one label byte, then a 32×32 image as
//! 1024 red, 1024 green and 1024 blue bytes — already the `C×H×W` order of [`Split`].

use std::fs;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Split};

/// The directory the official tarball extracts to.
pub const SUBDIR: &str = "cifar-10-batches-bin";
/// The five training files, in the order their records are concatenated.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-name file: one name per line, in label order.
pub const META_FILE: &str = "batches.meta.txt";
/// Image shape, `C×H×W`.
pub const SHAPE: [usize; 3] = [3, 32, 32];
/// Bytes per record: the label, then the image.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Resolves the directory holding the `.bin` files: `dir` itself or `dir/cifar-10-batches-bin`.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: format!("a directory holding the CIFAR-10 binary files (or their parent directory with {SUBDIR}/)"),
        });
    }
    if dir.join(TEST_FILE).is_file() || !dir.join(SUBDIR).is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Ok(dir.join(SUBDIR))
    }
}

/// Loads CIFAR-10 from the directory of the `.bin` files or its parent.
pub fn load(dir: &Path) -> Result<Dataset, DataError> {
    let dir = resolve_dir(dir)?;
    let classes = read_classes(&dir.join(META_FILE))?;
    let train_paths: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    let train = read_split(&train_paths, classes.len())?;
    let test = read_split(&[dir.join(TEST_FILE)], classes.len())?;
    Ok(Dataset::new("cifar10", classes, train, test))
}

/// Reads `batches.meta.txt`: one class name per line; blank lines (the official file ends with
/// some) are ignored.
fn read_classes(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read_existing(path, "the CIFAR-10 class-name file (one name per line)")?;
    parse_classes(&text, path)
}

/// Parses the contents of `batches.meta.txt`: one class name per line, blank lines ignored,
/// surrounding whitespace trimmed. `path` only names the source in errors.
pub fn parse_classes(bytes: &[u8], path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        DataError::format(path, "UTF-8 text, one class name per line", "binary data")
    })?;
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if classes.is_empty() {
        return Err(DataError::format(
            path,
            "at least one class name",
            "no non-blank line",
        ));
    }
    Ok(classes)
}

/// Concatenates the records of `paths` into one split.
fn read_split(paths: &[PathBuf], num_classes: usize) -> Result<Split, DataError> {
    let mut split: Option<Split> = None;
    for path in paths {
        let bytes = read_existing(path, "a CIFAR-10 binary batch file")?;
        let batch = parse_batch(&bytes, path, num_classes)?;
        match &mut split {
            None => split = Some(batch),
            Some(split) => {
                split.images.extend_from_slice(&batch.images);
                split.labels.extend_from_slice(&batch.labels);
            }
        }
    }
    Ok(split.unwrap_or(Split {
        shape: SHAPE,
        images: Vec::new(),
        labels: Vec::new(),
    }))
}

/// Parses the contents of one CIFAR-10 binary batch file: a non-zero number of [`RECORD`]-byte
/// records, each a label byte below `num_classes` and a 3×32×32 image. Label indices in errors
/// are positions within this file; `path` only names the source in errors.
pub fn parse_batch(bytes: &[u8], path: &Path, num_classes: usize) -> Result<Split, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::format(
            path,
            format!(
                "a non-zero multiple of {RECORD} bytes (1 label byte + 3×32×32 pixels per record)"
            ),
            format!(
                "{} bytes ({} records and {} bytes left over)",
                bytes.len(),
                bytes.len() / RECORD,
                bytes.len() % RECORD
            ),
        ));
    }
    let records = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(records * (RECORD - 1));
    let mut labels = Vec::with_capacity(records);
    for record in bytes.chunks_exact(RECORD) {
        labels.push(u32::from(record[0]));
        images.extend_from_slice(&record[1..]);
    }
    super::check_labels(&labels, num_classes, path)?;
    Ok(Split {
        shape: SHAPE,
        images,
        labels,
    })
}

/// Reads a file that the layout requires, turning "not found" into a [`DataError::Missing`].
pub(super) fn read_existing(path: &Path, expected: &str) -> Result<Vec<u8>, DataError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::Missing {
            path: path.to_path_buf(),
            expected: expected.to_string(),
        }),
        Err(e) => Err(DataError::io(path, e)),
    }
}
