//! Labelled text datasets: Rotten Tomatoes review snippets and any TSV/CSV file.
//!
//! | spec | source |
//! |---|---|
//! | `rotten-tomatoes[:DIR]` | `DIR/rotten_tomatoes_corpus_full.csv` (default DIR: `<cache>/rotten-tomatoes`, filled by `scripts/fetch-text-data.sh`) |
//! | `text:TRAIN[,TEST]` | `.tsv` or `.csv` files with a header naming a `label` and a `text` column |
//!
//! Rotten Tomatoes keeps the snippets labelled `fresh` or `rotten` (plot summaries are dropped),
//! each distinct text once, and splits **by movie** so no movie is on both sides: a movie goes to
//! test when the MD5 of its name, read as a big-endian integer, is 0 modulo 5 (10,300 train /
//! 2,452 test snippets). A single `text:` file is split the same way on the MD5 of each text.
//!
//! Classes are the distinct training labels, sorted (numerically when every label is a number);
//! a test label outside them is an error. Every error names the file and the line.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use md5::{Digest, Md5};

use super::download::cache_dir;
use super::DataError;

/// File name of the Rotten Tomatoes corpus inside its directory.
pub const ROTTEN_TOMATOES_FILE: &str = "rotten_tomatoes_corpus_full.csv";

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextExample {
    /// The text as read (not normalised; the tokenizer does that).
    pub text: String,
    /// Index into [`TextDataset::classes`].
    pub label: usize,
}

/// A text classification dataset held in memory.
#[derive(Debug, Clone)]
pub struct TextDataset {
    /// Short name for reports (`rotten-tomatoes`, or the train file's stem).
    pub name: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Training examples.
    pub train: Vec<TextExample>,
    /// Test examples.
    pub test: Vec<TextExample>,
}

/// True when `data` names a text dataset rather than an image one.
pub fn is_text_data(data: &str) -> bool {
    data.parse::<TextSpec>().is_ok()
}

/// Which text dataset to load, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSpec {
    /// `rotten-tomatoes` (from the cache) or `rotten-tomatoes:DIR`.
    RottenTomatoes(Option<PathBuf>),
    /// `text:TRAIN[,TEST]`.
    Files {
        /// The training file (the whole dataset when `test` is absent).
        train: PathBuf,
        /// An explicit test file.
        test: Option<PathBuf>,
    },
}

impl FromStr for TextSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DataError::TextSpec {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, arg) = match s.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (s, None),
        };
        match (kind, arg) {
            ("rotten-tomatoes", None) => Ok(Self::RottenTomatoes(None)),
            ("rotten-tomatoes", Some(dir)) if !dir.is_empty() => {
                Ok(Self::RottenTomatoes(Some(dir.into())))
            }
            ("text", Some(files)) if !files.is_empty() => {
                let mut parts = files.split(',');
                let train = PathBuf::from(parts.next().unwrap_or_default());
                let test = parts.next().map(PathBuf::from);
                if parts.next().is_some() || test.as_ref().is_some_and(|t| t.as_os_str().is_empty())
                {
                    return Err(err("expected one or two comma-separated files"));
                }
                Ok(Self::Files { train, test })
            }
            ("text", _) => Err(err("`text:` needs a file")),
            ("rotten-tomatoes", Some(_)) => Err(err("empty directory after `rotten-tomatoes:`")),
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for TextSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RottenTomatoes(None) => write!(f, "rotten-tomatoes"),
            Self::RottenTomatoes(Some(dir)) => write!(f, "rotten-tomatoes:{}", dir.display()),
            Self::Files { train, test: None } => write!(f, "text:{}", train.display()),
            Self::Files {
                train,
                test: Some(test),
            } => write!(f, "text:{},{}", train.display(), test.display()),
        }
    }
}

/// Loads the dataset a [`TextSpec`] names.
pub fn load_text(spec: &TextSpec) -> Result<TextDataset, DataError> {
    match spec {
        TextSpec::RottenTomatoes(dir) => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => cache_dir()?.join("rotten-tomatoes"),
            };
            rotten_tomatoes(&dir.join(ROTTEN_TOMATOES_FILE))
        }
        TextSpec::Files { train, test } => {
            let name = train
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "text".into());
            let train_rows = read_labelled(train)?;
            match test {
                Some(test) => {
                    let test_rows = read_labelled(test)?;
                    labelled_dataset(name, train_rows, test_rows)
                }
                None => {
                    let (test_rows, train_rows) = train_rows
                        .into_iter()
                        .partition(|row| held_out(row.text.as_bytes()));
                    labelled_dataset(name, train_rows, test_rows)
                }
            }
        }
    }
}

impl TextDataset {
    /// Moves a random `fraction` of the training texts (drawn from `seed`) into a validation
    /// split, which is returned; hyper-parameters are chosen on it, the test split stays unseen.
    pub fn split_off_validation(
        &mut self,
        fraction: f64,
        seed: u64,
    ) -> Result<Vec<TextExample>, DataError> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let count = (self.train.len() as f64 * fraction).round() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || count == 0 || count == self.train.len() {
            return Err(DataError::TextSpec {
                input: self.name.clone(),
                reason: format!(
                    "a validation fraction of {fraction} leaves no text on one side of {} training texts",
                    self.train.len()
                ),
            });
        }
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rand::rngs::ChaCha8Rng::seed_from_u64(seed ^ 0x7E57));
        let held: std::collections::HashSet<usize> = order[..count].iter().copied().collect();
        let (validation, train): (Vec<_>, Vec<_>) = std::mem::take(&mut self.train)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| held.contains(i));
        self.train = train.into_iter().map(|(_, e)| e).collect();
        Ok(validation.into_iter().map(|(_, e)| e).collect())
    }
}

/// A row of a labelled text file, before labels become indices.
#[derive(Debug, Clone)]
struct Row {
    text: String,
    label: String,
    path: PathBuf,
    line: u64,
}

/// Reads the Rotten Tomatoes corpus CSV (`category,text,movie_name,…`) and splits it by movie.
pub fn rotten_tomatoes(path: &Path) -> Result<TextDataset, DataError> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            expected: "the Rotten Tomatoes corpus CSV; run scripts/fetch-text-data.sh".into(),
        });
    }
    let mut reader = csv_reader(path)?;
    let columns = header_columns(&mut reader, path, &["category", "text", "movie_name"])?;
    let mut seen = HashSet::new();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(columns[i]).unwrap_or("");
        let label = match field(0) {
            "rotten" => 0,
            "fresh" => 1,
            "plot" => continue,
            other => {
                return Err(DataError::TextRecord {
                    path: path.to_path_buf(),
                    line,
                    message: format!("category `{other}`; expected fresh, rotten or plot"),
                })
            }
        };
        let text = field(1).trim();
        if text.is_empty() || !seen.insert(text.to_string()) {
            continue;
        }
        let example = TextExample {
            text: text.to_string(),
            label,
        };
        if held_out(field(2).as_bytes()) {
            test.push(example);
        } else {
            train.push(example);
        }
    }
    if train.is_empty() || test.is_empty() {
        return Err(DataError::TextRecord {
            path: path.to_path_buf(),
            line: 0,
            message: "no fresh/rotten snippets on one side of the split; is the file truncated?"
                .into(),
        });
    }
    Ok(TextDataset {
        name: "rotten-tomatoes".into(),
        classes: vec!["rotten".into(), "fresh".into()],
        train,
        test,
    })
}

/// The documented split rule: held out for test when MD5(key) mod 5 is 0.
fn held_out(key: &[u8]) -> bool {
    let digest = Md5::digest(key);
    // Big-endian 128-bit value mod 5, folded byte by byte.
    digest
        .iter()
        .fold(0u32, |acc, &b| (acc * 256 + b as u32) % 5)
        == 0
}

/// Reads a `.tsv` or `.csv` file with a header naming `label` and `text` columns.
fn read_labelled(path: &Path) -> Result<Vec<Row>, DataError> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            expected: "a .tsv or .csv file with `label` and `text` columns".into(),
        });
    }
    let mut reader = csv_reader(path)?;
    let columns = header_columns(&mut reader, path, &["label", "text"])?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let label = record.get(columns[0]).unwrap_or("").trim();
        let text = record.get(columns[1]).unwrap_or("").trim();
        let problem = if label.is_empty() {
            Some("empty label")
        } else if text.is_empty() {
            Some("empty text")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(DataError::TextRecord {
                path: path.to_path_buf(),
                line,
                message: format!("{problem}; every record needs a label and a text"),
            });
        }
        rows.push(Row {
            text: text.to_string(),
            label: label.to_string(),
            path: path.to_path_buf(),
            line,
        });
    }
    if rows.is_empty() {
        return Err(DataError::TextRecord {
            path: path.to_path_buf(),
            line: 0,
            message: "no records after the header".into(),
        });
    }
    Ok(rows)
}

fn labelled_dataset(
    name: String,
    train: Vec<Row>,
    test: Vec<Row>,
) -> Result<TextDataset, DataError> {
    let mut classes: Vec<String> = train
        .iter()
        .map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.iter().all(|c| c.parse::<f64>().is_ok()) {
        classes.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap()
                .total_cmp(&b.parse::<f64>().unwrap())
        });
    }
    if let (Some(row), true) = (train.first(), classes.len() < 2) {
        return Err(DataError::TextRecord {
            path: row.path.clone(),
            line: 0,
            message: format!(
                "the training records have {} class(es); expected at least 2",
                classes.len()
            ),
        });
    }
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let convert = |rows: Vec<Row>| -> Result<Vec<TextExample>, DataError> {
        rows.into_iter()
            .map(|row| match index.get(row.label.as_str()) {
                Some(&label) => Ok(TextExample {
                    text: row.text,
                    label,
                }),
                None => Err(DataError::TextRecord {
                    path: row.path,
                    line: row.line,
                    message: format!(
                        "unknown label `{}`; the training labels are: {}",
                        row.label,
                        classes.join(", ")
                    ),
                }),
            })
            .collect()
    };
    let train = convert(train)?;
    let test = convert(test)?;
    Ok(TextDataset {
        name,
        classes: classes.clone(),
        train,
        test,
    })
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, DataError> {
    let delimiter = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("tsv") => b'\t',
        Some(e) if e.eq_ignore_ascii_case("csv") => b',',
        _ => {
            return Err(DataError::TextRecord {
                path: path.to_path_buf(),
                line: 0,
                message: "unknown file type; expected a .tsv or .csv extension".into(),
            })
        }
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(file))
}

/// Positions of the `wanted` columns in the header (case-insensitive).
fn header_columns(
    reader: &mut csv::Reader<std::fs::File>,
    path: &Path,
    wanted: &[&str],
) -> Result<Vec<usize>, DataError> {
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    wanted
        .iter()
        .map(|name| {
            header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
                .ok_or_else(|| DataError::TextRecord {
                    path: path.to_path_buf(),
                    line: 1,
                    message: format!(
                        "no `{name}` column in the header [{}]; expected columns {}",
                        header.iter().collect::<Vec<_>>().join(", "),
                        wanted.join(", ")
                    ),
                })
        })
        .collect()
}

fn csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map_or(0, |p| p.line());
    let message = match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8; expected a UTF-8 text file".to_string(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        _ => error.to_string(),
    };
    DataError::TextRecord {
        path: path.to_path_buf(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule_matches_the_python_definition() {
        // int(hashlib.md5(b"aankhen").hexdigest(), 16) % 5, computed in Python.
        let reference = [
            ("aankhen", 2u32),
            ("abandon", 0),
            ("zoolander", 4),
            ("gattaca", 3),
        ];
        for (name, expected) in reference {
            let digest = Md5::digest(name.as_bytes());
            let value = u128::from_be_bytes(digest.into()) % 5;
            assert_eq!(value as u32, expected, "{name}");
            assert_eq!(held_out(name.as_bytes()), expected == 0, "{name}");
        }
    }

    #[test]
    fn specs_parse_and_print() {
        for s in [
            "rotten-tomatoes",
            "rotten-tomatoes:/d",
            "text:a.tsv",
            "text:a.tsv,b.tsv",
        ] {
            assert_eq!(s.parse::<TextSpec>().unwrap().to_string(), s);
        }
        for s in [
            "text:",
            "text",
            "text:a,b,c",
            "text:a,",
            "rotten-tomatoes:",
            "imdb",
        ] {
            assert!(s.parse::<TextSpec>().is_err(), "{s}");
        }
    }
}
