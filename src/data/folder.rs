//! Image-folder datasets: `<dir>/train/<class>/*.{png,jpg,jpeg}` and `<dir>/test/<class>/*`.
//!
//! Classes are the sorted subfolder names of `train` (and `test` must have the same ones); within
//! a class, files are taken in sorted name order, so the dataset is the same on every machine.
//! Images are decoded in parallel, since a CIFAR-10-sized folder holds 60,000 files.

use std::fs;
use std::path::{Path, PathBuf};

use image::{ColorType, DynamicImage};

use super::{progress, DataError, Dataset, Split};

/// File extensions (compared case-insensitively) that are taken as images.
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Loads `<dir>/train` and `<dir>/test`. The dataset is named after the directory.
pub fn load(dir: &Path) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            expected: "a directory with train/<class>/ and test/<class>/ image folders".into(),
        });
    }
    let train_dir = dir.join("train");
    let test_dir = dir.join("test");
    let classes = list_classes(&train_dir)?;
    let test_classes = list_classes(&test_dir)?;
    if classes != test_classes {
        return Err(DataError::ClassMismatch {
            train: train_dir,
            test: test_dir,
            train_classes: classes,
            test_classes,
        });
    }
    let train_files = list_images(&train_dir, &classes)?;
    let test_files = list_images(&test_dir, &classes)?;

    // Decode both splits in one pass so that one reference image fixes the shape for both.
    let all: Vec<&Path> = train_files
        .iter()
        .chain(&test_files)
        .map(|(p, _)| p.as_path())
        .collect();
    let (shape, mut images) = decode_all(&all)?;
    let size: usize = shape.iter().product();
    let test_images = images.split_off(train_files.len() * size);
    let labels = |files: &[(PathBuf, u32)]| files.iter().map(|&(_, l)| l).collect();
    let train = Split {
        shape,
        images,
        labels: labels(&train_files),
    };
    let test = Split {
        shape,
        images: test_images,
        labels: labels(&test_files),
    };
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "folder".to_string());
    Ok(Dataset::new(name, classes, train, test))
}

/// The sorted names of the subdirectories of `split_dir`. Hidden directories (`.git`,
/// `.ipynb_checkpoints`, …) are not classes.
fn list_classes(split_dir: &Path) -> Result<Vec<String>, DataError> {
    if !split_dir.is_dir() {
        return Err(DataError::Missing {
            path: split_dir.to_path_buf(),
            expected: "a split directory holding one subfolder per class".into(),
        });
    }
    let mut classes = Vec::new();
    for entry in fs::read_dir(split_dir).map_err(|e| DataError::io(split_dir, e))? {
        let entry = entry.map_err(|e| DataError::io(split_dir, e))?;
        let path = entry.path();
        // `Path::is_dir` follows symlinks, so a class may be a link to another folder
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|name| {
            DataError::format(&path, "a UTF-8 class folder name", format!("{name:?}"))
        })?;
        if !name.starts_with('.') {
            classes.push(name);
        }
    }
    if classes.is_empty() {
        return Err(DataError::Missing {
            path: split_dir.join("<class>"),
            expected: "at least one class subfolder".into(),
        });
    }
    classes.sort();
    Ok(classes)
}

/// The image files of every class, in class order then sorted file-name order, with their labels.
fn list_images(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>, DataError> {
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = split_dir.join(class);
        let mut class_files = Vec::new();
        for entry in fs::read_dir(&class_dir).map_err(|e| DataError::io(&class_dir, e))? {
            let path = entry.map_err(|e| DataError::io(&class_dir, e))?.path();
            let is_image = path.extension().is_some_and(|ext| {
                EXTENSIONS
                    .iter()
                    .any(|known| ext.eq_ignore_ascii_case(known))
            });
            if is_image && path.is_file() {
                class_files.push(path);
            }
        }
        if class_files.is_empty() {
            return Err(DataError::EmptyClass { path: class_dir });
        }
        class_files.sort();
        files.extend(class_files.into_iter().map(|p| (p, label as u32)));
    }
    Ok(files)
}

/// Decodes every file into one `N×C×H×W` buffer, in parallel over contiguous chunks. The first
/// file fixes the shape; any other shape is an error naming the odd file. When several files are
/// bad, the error is about the first in order, whatever the thread timing.
fn decode_all(files: &[&Path]) -> Result<([usize; 3], Vec<u8>), DataError> {
    let (shape, _) = decode(files[0])?;
    let size: usize = shape.iter().product();
    let mut images = vec![0u8; files.len() * size];

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let chunk = files.len().div_ceil(threads);
    let bar = progress::bar(files.len() as u64, "decoding images", false);
    let results: Vec<Result<(), DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .zip(images.chunks_mut(chunk * size))
            .map(|(paths, out)| {
                let bar = &bar;
                s.spawn(move || {
                    for (path, slot) in paths.iter().zip(out.chunks_exact_mut(size)) {
                        let (found, pixels) = decode(path)?;
                        if found != shape {
                            return Err(DataError::ImageShape {
                                path: path.to_path_buf(),
                                reference: files[0].to_path_buf(),
                                expected: show_shape(shape),
                                found: show_shape(found),
                            });
                        }
                        slot.copy_from_slice(&pixels);
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    bar.finish_and_clear();
    // chunks are contiguous and in order, so the first failing chunk holds the first bad file
    results.into_iter().collect::<Result<(), _>>()?;
    Ok((shape, images))
}

/// Decodes one image to `C×H×W` bytes: grayscale (with or without alpha) to one channel,
/// anything else to RGB.
fn decode(path: &Path) -> Result<([usize; 3], Vec<u8>), DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, interleaved) = match img.color() {
        ColorType::L8 | ColorType::L16 | ColorType::La8 | ColorType::La16 => {
            (1, img.to_luma8().into_raw())
        }
        _ => (3, rgb(img)),
    };
    Ok(([channels, h, w], hwc_to_chw(interleaved, channels, h * w)))
}

fn rgb(img: DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        other => other.to_rgb8().into_raw(),
    }
}

/// Interleaved `H×W×C` pixels to planar `C×H×W`.
fn hwc_to_chw(hwc: Vec<u8>, channels: usize, pixels: usize) -> Vec<u8> {
    if channels == 1 {
        return hwc;
    }
    let mut chw = vec![0u8; hwc.len()];
    for (p, px) in hwc.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * pixels + p] = v;
        }
    }
    chw
}

fn show_shape([c, h, w]: [usize; 3]) -> String {
    format!("{c}×{h}×{w} (C×H×W)")
}
