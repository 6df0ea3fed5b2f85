//! The IDX format of MNIST and Fashion-MNIST, plain or gzipped.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` = unsigned byte), the
//! number of dimensions, then one `u32` per dimension — followed by the data. Images are
//! `N × H × W` (magic `0x00000803`), labels are `N` (magic `0x00000801`).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{DataError, Dataset, Split};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The two leading bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a file, gunzipping it when it is a gzip stream (detected from its first bytes, so a
/// misnamed file still works).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = fs::read(path).map_err(|e| DataError::io(path, e))?;
    gunzip_if_needed(raw, path)
}

/// Gunzips `raw` when it starts with the gzip magic, else returns it unchanged. `path` only
/// names the source in errors.
pub fn gunzip_if_needed(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    // IDX data compresses roughly 2:1; reserving avoids repeated reallocation of a 47 MB buffer.
    let mut out = Vec::with_capacity(raw.len() * 2);
    GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

/// Parses the header of an IDX file of unsigned bytes and checks that the data length agrees
/// with the dimensions. Returns the dimensions and the offset of the data.
fn parse_header(
    bytes: &[u8],
    path: &Path,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, usize), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("an IDX {what} file (magic 0x{magic:08x})"),
            format!("only {} bytes", bytes.len()),
        ));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::format(
            path,
            format!("IDX {what} magic number 0x{magic:08x}"),
            format!("0x{found:08x}"),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!("a {header}-byte IDX header"),
            format!("a file of {} bytes", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    // checked arithmetic: a corrupt header must give an error, not an overflow panic
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header));
    let shown = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    match expected {
        Some(len) if len == bytes.len() => Ok((dims, header)),
        Some(len) => Err(DataError::format(
            path,
            format!("{len} bytes (header of {header} + {shown} items, as the header says)"),
            format!("{} bytes", bytes.len()),
        )),
        None => Err(DataError::format(
            path,
            "IDX dimensions whose product fits in memory",
            format!("dimensions {shown}"),
        )),
    }
}

/// Parses an (already decompressed) IDX images file: returns the pixels (`N×H×W`, row-major)
/// and `[N, H, W]`. `path` only names the source in errors.
pub fn parse_images(mut bytes: Vec<u8>, path: &Path) -> Result<(Vec<u8>, [usize; 3]), DataError> {
    let (dims, header) = parse_header(&bytes, path, IMAGES_MAGIC, "images")?;
    bytes.drain(..header);
    Ok((bytes, [dims[0], dims[1], dims[2]]))
}

/// Parses an (already decompressed) IDX labels file. `path` only names the source in errors.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u32>, DataError> {
    let (_, header) = parse_header(bytes, path, LABELS_MAGIC, "labels")?;
    Ok(bytes[header..].iter().map(|&l| u32::from(l)).collect())
}

/// Builds a split from the contents of an images file and a labels file, checking that the
/// counts agree and every label is below `num_classes`.
pub fn split_from_bytes(
    images: Vec<u8>,
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    num_classes: usize,
) -> Result<Split, DataError> {
    let (pixels, [n, h, w]) = parse_images(images, images_path)?;
    let labels = parse_labels(labels, labels_path)?;
    if labels.len() != n {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: n,
            labels: labels.len(),
        });
    }
    super::check_labels(&labels, num_classes, labels_path)?;
    Ok(Split {
        shape: [1, h, w],
        images: pixels,
        labels,
    })
}

/// `dir/name`, or `dir/name.gz` when only the compressed file exists.
pub fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        path: plain,
        expected: format!("the IDX file {name} or {name}.gz"),
    })
}

/// Loads an MNIST-style directory (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`).
pub fn load_dir(dir: &Path, name: &str, classes: &[&str]) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: format!("a directory holding the {name} IDX files"),
        });
    }
    let load_split = |prefix: &str| -> Result<(Split, PathBuf), DataError> {
        let images_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_maybe_gz(&images_path)?;
        let labels = read_maybe_gz(&labels_path)?;
        let split = split_from_bytes(images, &images_path, &labels, &labels_path, classes.len())?;
        Ok((split, images_path))
    };
    // decompressing the two splits in parallel roughly halves the load time of the 26 MB archive
    let (train, test) = std::thread::scope(|s| {
        let train = s.spawn(|| load_split("train"));
        let test = load_split("t10k");
        (train.join(), test)
    });
    let (train, _) = train.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let (test, test_images_path) = test?;
    if test.shape != train.shape {
        let [_, h, w] = train.shape;
        let [_, th, tw] = test.shape;
        return Err(DataError::format(
            test_images_path,
            format!("{h}×{w} images, like the training images"),
            format!("{th}×{tw} images"),
        ));
    }
    Ok(Dataset::new(
        name,
        classes.iter().map(|c| c.to_string()).collect(),
        train,
        test,
    ))
}

/// Writes `N×H×W` images as an IDX file, gzipped (deterministically: no timestamp) when `path`
/// ends in `.gz`.
pub fn write_images(path: &Path, images: &[u8], [n, h, w]: [usize; 3]) -> Result<(), DataError> {
    assert_eq!(images.len(), n * h * w, "image buffer does not match N×H×W");
    let mut bytes = Vec::with_capacity(16 + images.len());
    for v in [IMAGES_MAGIC, n as u32, h as u32, w as u32] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(images);
    write_maybe_gz(path, &bytes)
}

/// Writes labels (each below 256) as an IDX file, gzipped when `path` ends in `.gz`.
pub fn write_labels(path: &Path, labels: &[u32]) -> Result<(), DataError> {
    let mut bytes = Vec::with_capacity(8 + labels.len());
    bytes.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    for &l in labels {
        let byte = u8::try_from(l).map_err(|_| {
            DataError::format(
                path,
                "labels below 256 (IDX stores one byte each)",
                l.to_string(),
            )
        })?;
        bytes.push(byte);
    }
    write_maybe_gz(path, &bytes)
}

fn write_maybe_gz(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let write_err = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.extension().is_some_and(|e| e == "gz") {
        let file = fs::File::create(path).map_err(write_err)?;
        let mut enc = GzEncoder::new(std::io::BufWriter::new(file), Compression::best());
        enc.write_all(bytes).map_err(write_err)?;
        enc.finish()
            .and_then(|mut w| w.flush())
            .map_err(write_err)?;
        Ok(())
    } else {
        fs::write(path, bytes).map_err(write_err)
    }
}
