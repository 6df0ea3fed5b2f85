//! Downloading the standard datasets into a local cache, with checksums.
//!
//! `cifar10`, `cifar100` (and `cifar100-coarse`, which shares its files), `mnist` and
//! `fashion-mnist` given without a directory are looked up in the cache directory —
//! `$DISTILL_DATA`, else `~/.cache/distill` — under a subdirectory per dataset, and downloaded
//! from their official URLs when absent. Setting `DISTILL_MIRROR` to a base URL (e.g.
//! `http://127.0.0.1:8000/`) fetches every file as `<mirror>/<file name>` instead; the published
//! MD5s are still checked, so a mirror must serve the original files.
//!
//! A download goes to a hidden `.<name>.part-<pid>` file next to its destination and is renamed
//! only after its MD5 matched, so a file with the final name is always complete; on any error the
//! partial file is deleted.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::{cifar, cifar100, hex, progress, DataError};

/// Environment variable overriding the cache directory.
pub const DATA_ENV: &str = "DISTILL_DATA";
/// Environment variable overriding the base URL of every download.
pub const MIRROR_ENV: &str = "DISTILL_MIRROR";

/// A downloadable dataset: where it comes from and what its files must hash to.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// Subdirectory of the cache directory.
    pub cache_subdir: &'static str,
    /// Official base URL (ends with `/`).
    pub base_url: &'static str,
    /// File names under the base URL, with their MD5 (hex).
    pub files: &'static [(&'static str, &'static str)],
}

/// MNIST, from the mirror torchvision uses (the original site throttles downloads).
pub const MNIST: Remote = Remote {
    cache_subdir: "mnist",
    base_url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
    files: &[
        (
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ],
};

/// Fashion-MNIST, from Zalando Research's bucket.
pub const FASHION_MNIST: Remote = Remote {
    cache_subdir: "fashion-mnist",
    base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files: &[
        (
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ],
};

/// CIFAR-10, binary version, from its authors' site.
pub const CIFAR10: Remote = Remote {
    cache_subdir: "cifar10",
    base_url: "https://www.cs.toronto.edu/~kriz/",
    files: &[("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")],
};

/// CIFAR-100, binary version, from its authors' site. `cifar100` and `cifar100-coarse` share it.
pub const CIFAR100: Remote = Remote {
    cache_subdir: "cifar100",
    base_url: "https://www.cs.toronto.edu/~kriz/",
    files: &[(
        "cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    )],
};

/// The cache directory: `$DISTILL_DATA`, else `$HOME/.cache/distill`.
pub fn cache_dir() -> Result<PathBuf, DataError> {
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("distill")),
        None => Err(DataError::Missing {
            path: PathBuf::from("$HOME"),
            expected: format!("a home directory for the dataset cache; set {DATA_ENV} instead"),
        }),
    }
}

/// The URL of `file` of `remote`, honouring `DISTILL_MIRROR`.
pub fn url(remote: &Remote, file: &str) -> String {
    match std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty()) {
        Some(mirror) => format!("{}/{file}", mirror.trim_end_matches('/')),
        None => format!("{}{file}", remote.base_url),
    }
}

/// Makes sure the four gzipped IDX files of `remote` (MNIST or Fashion-MNIST) are in the cache,
/// downloading the missing ones, and returns their directory.
pub fn ensure_idx(remote: &Remote) -> Result<PathBuf, DataError> {
    let dir = cache_dir()?.join(remote.cache_subdir);
    for &(file, md5) in remote.files {
        let dest = dir.join(file);
        if !dest.is_file() {
            fetch(&url(remote, file), &dest, md5)?;
        }
    }
    Ok(dir)
}

/// Makes sure the extracted CIFAR-10 binary files are in the cache, downloading and extracting
/// the tarball when needed, and returns the directory holding `cifar-10-batches-bin/`.
pub fn ensure_cifar10() -> Result<PathBuf, DataError> {
    let files: Vec<&str> = cifar::TRAIN_FILES
        .iter()
        .chain([&cifar::TEST_FILE, &cifar::META_FILE])
        .copied()
        .collect();
    ensure_tarball(&CIFAR10, cifar::SUBDIR, &files, "the CIFAR-10 .bin files")
}

/// Makes sure the extracted CIFAR-100 binary files (both splits and both class-name files) are
/// in the cache, downloading and extracting the tarball when needed, and returns the directory
/// holding `cifar-100-binary/`.
pub fn ensure_cifar100() -> Result<PathBuf, DataError> {
    ensure_tarball(
        &CIFAR100,
        cifar100::SUBDIR,
        &cifar100::FILES,
        "the CIFAR-100 .bin and class-name files",
    )
}

/// Makes sure `files` are in `<cache>/<remote.cache_subdir>/<subdir>/`, else downloads the one
/// tarball of `remote` (unless it is already there), extracts it and moves its `subdir` into
/// place. Returns `<cache>/<remote.cache_subdir>`. `what` describes `files` in errors.
fn ensure_tarball(
    remote: &Remote,
    subdir: &str,
    files: &[&str],
    what: &str,
) -> Result<PathBuf, DataError> {
    let dir = cache_dir()?.join(remote.cache_subdir);
    let target = dir.join(subdir);
    let complete = |d: &Path| files.iter().all(|f| d.join(f).is_file());
    if complete(&target) {
        return Ok(dir);
    }
    let (file, md5) = remote.files[0];
    let archive = dir.join(file);
    if !archive.is_file() {
        fetch(&url(remote, file), &archive, md5)?;
    }
    // Extract next to the destination and move the directory into place in one rename, so an
    // interrupted extraction never leaves a half-filled target directory.
    let staging = dir.join(format!(".extract-{}", std::process::id()));
    let result = extract_tar_gz(&archive, &staging).and_then(|()| {
        let extracted = staging.join(subdir);
        if !complete(&extracted) {
            return Err(DataError::format(
                &archive,
                format!("a tarball holding {subdir}/ with {what}"),
                "an archive without them",
            ));
        }
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|e| DataError::Write {
                path: target.clone(),
                source: e,
            })?;
        }
        fs::rename(&extracted, &target).map_err(|e| DataError::Write {
            path: target.clone(),
            source: e,
        })
    });
    let _ = fs::remove_dir_all(&staging);
    result?;
    // the extracted files are all that is read from now on; the tarball (about 170 MB for either
    // CIFAR) is redundant
    let _ = fs::remove_file(&archive);
    Ok(dir)
}

/// Downloads `url` to `dest`, checking that its MD5 is `md5` (hex). On success `dest` holds the
/// complete file; on any failure nothing is left at `dest` nor at the temporary path.
pub fn fetch(url: &str, dest: &Path, md5: &str) -> Result<(), DataError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| DataError::Write {
        path: parent.to_path_buf(),
        source: e,
    })?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let partial = parent.join(format!(".{name}.part-{}", std::process::id()));
    eprintln!("downloading {url} to {}", dest.display());
    let result = download_to(url, dest, &partial, md5).and_then(|()| {
        fs::rename(&partial, dest).map_err(|e| DataError::Write {
            path: dest.to_path_buf(),
            source: e,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Streams `url` into `partial` while hashing it; `dest` only names the target in errors.
fn download_to(url: &str, dest: &Path, partial: &Path, md5: &str) -> Result<(), DataError> {
    let failed = |message: String| DataError::Download {
        url: url.to_string(),
        path: dest.to_path_buf(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let len = response.body().content_length();
    let bar = progress::bar(len.unwrap_or(0), &name_of(dest), true);
    let mut reader = response.body_mut().as_reader();
    let write_err = |source| DataError::Write {
        path: partial.to_path_buf(),
        source,
    };
    let mut file = BufWriter::new(fs::File::create(partial).map_err(write_err)?);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| failed(format!("connection failed after {received} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(write_err)?;
        received += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if let Some(len) = len.filter(|&l| l != received) {
        return Err(failed(format!(
            "expected {len} bytes (Content-Length), received {received}"
        )));
    }
    let file = file.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let found = hex(&hasher.finalize());
    if !found.eq_ignore_ascii_case(md5) {
        return Err(DataError::Checksum {
            url: url.to_string(),
            path: dest.to_path_buf(),
            expected: md5.to_string(),
            found,
        });
    }
    Ok(())
}

/// Extracts a `.tar.gz` archive into `into` (created if needed). Entries that would land outside
/// `into` (absolute paths, `..`) are skipped by the `tar` crate.
pub fn extract_tar_gz(archive: &Path, into: &Path) -> Result<(), DataError> {
    let file = fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    fs::create_dir_all(into).map_err(|e| DataError::Write {
        path: into.to_path_buf(),
        source: e,
    })?;
    let bar = progress::bar(len, &format!("extracting {}", name_of(archive)), true);
    let gz = flate2::read::GzDecoder::new(bar.wrap_read(std::io::BufReader::new(file)));
    // Tar and gzip errors surface as io errors while reading entries; both mean a bad archive.
    let bad = |e: std::io::Error| {
        DataError::format(
            archive,
            "a complete .tar.gz archive",
            format!("an unreadable one ({e})"),
        )
    };
    let mut tar = tar::Archive::new(gz);
    for entry in tar.entries().map_err(bad)? {
        entry.map_err(bad)?.unpack_in(into).map_err(bad)?;
    }
    bar.finish_and_clear();
    Ok(())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
