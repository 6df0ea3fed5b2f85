//! The one error type of the data module.
//!
//! Every variant names the file, directory or URL involved and says what was expected and what
//! was found, so a user can fix the input without reading the source.

use std::path::PathBuf;

/// Why a dataset could not be parsed, found, downloaded or split.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset specification string that is not one of the accepted forms.
    #[error("unknown dataset `{input}`: {reason}; expected one of: embedded, cifar10[:DIR], cifar100[:DIR], cifar100-coarse[:DIR], mnist[:DIR], fashion-mnist[:DIR], folder:DIR")]
    Spec {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file or directory that the dataset layout requires does not exist.
    #[error("{}: not found; expected {expected}", path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What should be there.
        expected: String,
    },

    /// A file or directory exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file could not be written (cache, download or extraction target).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A gzip stream that is corrupt or ends early.
    #[error("{}: corrupt or truncated gzip stream (expected a complete .gz file): {source}", path.display())]
    Gzip {
        /// The compressed file.
        path: PathBuf,
        /// The decompressor's error.
        source: std::io::Error,
    },

    /// A file whose contents do not have the expected layout (magic number, size, header).
    #[error("{}: expected {expected}, found {found}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },

    /// A text dataset specification that is not one of the accepted forms.
    #[error("unknown text dataset `{input}`: {reason}; expected rotten-tomatoes[:DIR] or text:TRAIN_FILE[,TEST_FILE] (.tsv or .csv)")]
    TextSpec {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A record of a labelled text file that cannot be used, with its line number.
    #[error("{}: {message}", record_location(path, *line))]
    TextRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line where the record starts (0 when the file as a whole is at fault).
        line: u64,
        /// What is wrong and what was expected.
        message: String,
    },

    /// The images file and the labels file of one split hold different numbers of items.
    #[error("{} holds {images} images but {} holds {labels} labels; expected the same count", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },

    /// A label that does not index into the class list.
    #[error("{}: label {label} of item {index} is out of range; expected a label below the number of classes ({classes})", path.display())]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// Position of the item in the file.
        index: usize,
        /// The label found.
        label: u32,
        /// Number of classes.
        classes: usize,
    },

    /// An image file the `image` crate cannot decode.
    #[error("{}: cannot decode image (expected a PNG or JPEG file): {message}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },

    /// An image in a folder dataset whose size or channel count differs from the others.
    #[error("{}: image is {found} but {} is {expected}; all images of a folder dataset must share one size and channel count", path.display(), reference.display())]
    ImageShape {
        /// The odd image.
        path: PathBuf,
        /// The first image, which fixed the shape.
        reference: PathBuf,
        /// Shape of the first image, as `C×H×W`.
        expected: String,
        /// Shape of the odd image, as `C×H×W`.
        found: String,
    },

    /// A class directory of a folder dataset that holds no image.
    #[error("{}: class folder holds no image; expected at least one .png, .jpg or .jpeg file", path.display())]
    EmptyClass {
        /// The class directory.
        path: PathBuf,
    },

    /// The train and test splits of a folder dataset have different class folders.
    #[error("{} has classes [{}] but {} has classes [{}]; expected the same class folders in both splits", train.display(), train_classes.join(", "), test.display(), test_classes.join(", "))]
    ClassMismatch {
        /// The train directory.
        train: PathBuf,
        /// The test directory.
        test: PathBuf,
        /// Sorted class names under `train`.
        train_classes: Vec<String>,
        /// Sorted class names under `test`.
        test_classes: Vec<String>,
    },

    /// An HTTP download that failed before its checksum could be checked.
    #[error("downloading {url} to {}: {message}", path.display())]
    Download {
        /// The URL.
        url: String,
        /// The file it was to be saved as.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A downloaded file whose MD5 differs from the published one; the file was deleted.
    #[error("downloading {url} to {}: MD5 checksum mismatch: expected {expected}, found {found}; the download was discarded", path.display())]
    Checksum {
        /// The URL.
        url: String,
        /// The file it was to be saved as (no longer present).
        path: PathBuf,
        /// The published MD5 (hex).
        expected: String,
        /// The MD5 of what was received (hex).
        found: String,
    },

    /// A bad argument to a split or subset operation (not a problem with any file).
    #[error("invalid validation split: {0}")]
    Validation(String),
}

impl DataError {
    /// Shorthand for an [`DataError::Io`] error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a [`DataError::Format`] error on `path`.
    pub(crate) fn format(
        path: impl Into<PathBuf>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        DataError::Format {
            path: path.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// `file:line`, or just the file when the file as a whole is at fault (line 0).
fn record_location(path: &std::path::Path, line: u64) -> String {
    match line {
        0 => path.display().to_string(),
        line => format!("{}:{line}", path.display()),
    }
}
