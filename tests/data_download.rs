//! Downloads against a tiny HTTP server on 127.0.0.1 — these tests never touch the internet.

mod data_common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;

use data_common::{
    dir_entries, gzip, idx_images, md5_hex, serve, write_cifar_dir, write_mnist_dir,
};
use distill::data::download::{self, extract_tar_gz, fetch};
use distill::data::DataError;

/// A generated payload bigger than one read buffer.
fn payload() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8)
        .collect()
}

#[test]
fn fetch_saves_the_file_when_the_md5_matches() {
    let body = payload();
    let base = serve(HashMap::from([(
        "/data/file.bin".to_string(),
        body.clone(),
    )]));
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("sub").join("file.bin");
    fetch(&format!("{base}/data/file.bin"), &dest, &md5_hex(&body)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        dir_entries(&cache.path().join("sub")),
        ["file.bin"],
        "no partial file left"
    );
}

#[test]
fn fetch_with_wrong_md5_errors_with_both_checksums_and_leaves_nothing() {
    let body = payload();
    let base = serve(HashMap::from([("/file.bin".to_string(), body.clone())]));
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("file.bin");
    let url = format!("{base}/file.bin");
    let wrong = "0123456789abcdef0123456789abcdef";
    let err = fetch(&url, &dest, wrong).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    for needle in [
        url.as_str(),
        &dest.display().to_string(),
        wrong,
        &md5_hex(&body),
    ] {
        assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
    }
    assert!(
        dir_entries(cache.path()).is_empty(),
        "left {:?}",
        dir_entries(cache.path())
    );
}

#[test]
fn fetch_of_a_missing_url_names_it() {
    let base = serve(HashMap::new());
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{base}/nothing.gz");
    let err = fetch(&url, &cache.path().join("nothing.gz"), "00").unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&url) && err.to_string().contains("404"),
        "{err}"
    );
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn cli_download_through_mirror_checks_the_official_md5() {
    // The local "mirror" serves small fake MNIST files; their MD5s differ from the published
    // ones, so the command must fail on the first file and leave nothing in the cache.
    let fake = gzip(&idx_images(1, 2, 2, &[1, 2, 3, 4]));
    let files = download::MNIST
        .files
        .iter()
        .map(|&(name, _)| (format!("/{name}"), fake.clone()))
        .collect();
    let base = serve(files);
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["data", "info", "mnist", "--json"])
        .env("DISTILL_DATA", cache.path())
        .env("DISTILL_MIRROR", format!("{base}/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (first, official_md5) = download::MNIST.files[0];
    for needle in [
        &format!("{base}/{first}"),
        official_md5,
        &md5_hex(&fake),
        "checksum",
    ] {
        assert!(
            stderr.contains(needle),
            "stderr `{stderr}` does not mention `{needle}`"
        );
    }
    assert!(
        dir_entries(&cache.path().join("mnist")).is_empty(),
        "{:?}",
        dir_entries(&cache.path().join("mnist"))
    );
}

#[test]
fn cli_uses_cached_datasets_without_downloading() {
    // A mirror on a port nobody listens on: any download attempt would fail the command.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    let cache = tempfile::tempdir().unwrap();
    write_mnist_dir(&cache.path().join("mnist"), 30, 10, 28, 28, true);
    write_mnist_dir(&cache.path().join("fashion-mnist"), 20, 5, 28, 28, true);
    write_cifar_dir(&cache.path().join("cifar10/cifar-10-batches-bin"), 4, 6);
    for (spec, train, test, shape) in [
        ("mnist", 30, 10, [1, 28, 28]),
        ("fashion-mnist", 20, 5, [1, 28, 28]),
        ("cifar10", 20, 6, [3, 32, 32]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(["data", "info", spec, "--json"])
            .env("DISTILL_DATA", cache.path())
            .env("DISTILL_MIRROR", &mirror)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{spec}: {stderr}");
        assert!(!stderr.contains("downloading"), "{spec}: {stderr}");
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["name"], spec);
        assert_eq!(
            (info["train"].as_u64(), info["test"].as_u64()),
            (Some(train), Some(test))
        );
        assert_eq!(info["shape"], serde_json::json!(shape));
    }
}

#[test]
fn tarball_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar.gz");
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in [("top/x.bin", &b"hello"[..]), ("top/sub/y.txt", b"world")] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, body).unwrap();
    }
    let tar_bytes = builder.into_inner().unwrap();
    std::fs::write(&archive, gzip(&tar_bytes)).unwrap();
    let out = tmp.path().join("out");
    extract_tar_gz(&archive, &out).unwrap();
    assert_eq!(std::fs::read(out.join("top/x.bin")).unwrap(), b"hello");
    assert_eq!(std::fs::read(out.join("top/sub/y.txt")).unwrap(), b"world");

    // a truncated archive is an error naming it
    let full = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &full[..full.len() / 2]).unwrap();
    let err = extract_tar_gz(&archive, &tmp.path().join("out2")).unwrap_err();
    assert!(
        err.to_string().contains(&archive.display().to_string()),
        "{err}"
    );
}
