//! The pretrained teacher compiled into the binary: `teacher = "embedded"` in an experiment config.
//!
//! The default study distils on the embedded 6,000-image Fashion-MNIST subset. A teacher trained on
//! that subset alone gets within about 2 points of its own student, so it has little to teach; this
//! one is `teacher-small` trained on all 60,000 Fashion-MNIST training images (none of the embedded
//! test images), which is the situation distillation is for: a teacher that learned from more
//! than the student will ever see. Provenance and the command that made it:
//! `assets/teacher/README.md`.

use std::path::Path;

use anyhow::Context;

use super::checkpoint::{self, write_atomic, MANIFEST_FILE, META_FILE, SPEC_FILE, WEIGHTS_FILE};

/// The value of `teacher` that selects the embedded teacher.
pub const EMBEDDED_TEACHER: &str = "embedded";

/// The checkpoint files of the embedded teacher, with the history of its training run.
const FILES: [(&str, &[u8]); 5] = [
    (SPEC_FILE, include_bytes!("../../assets/teacher/spec.toml")),
    (
        WEIGHTS_FILE,
        include_bytes!("../../assets/teacher/model.bpk"),
    ),
    (META_FILE, include_bytes!("../../assets/teacher/meta.json")),
    (
        MANIFEST_FILE,
        include_bytes!("../../assets/teacher/manifest.json"),
    ),
    (
        "history.csv",
        include_bytes!("../../assets/teacher/history.csv"),
    ),
];

/// Whether a configured teacher path names the embedded teacher.
pub fn is_embedded_teacher(path: &Path) -> bool {
    path == Path::new(EMBEDDED_TEACHER)
}

/// Writes the embedded teacher's checkpoint into `dir` (created if needed) and checks it against
/// its manifest, so it loads like any teacher a `distill train` run saved there.
pub fn write_embedded_teacher(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create teacher directory {}", dir.display()))?;
    for (name, bytes) in FILES {
        let path = dir.join(name);
        // `--jobs` workers find the teacher their parent wrote: rewriting it (through the same
        // temporary names) would race.
        if std::fs::read(&path).is_ok_and(|existing| existing == *bytes) {
            continue;
        }
        write_atomic(&path, bytes)?;
    }
    checkpoint::verify_manifest(dir).context("the embedded teacher")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_the_embedded_teacher_again_leaves_it_alone_even_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher");
        write_embedded_teacher(&teacher).unwrap();
        let modified = |name: &str| {
            std::fs::metadata(teacher.join(name))
                .unwrap()
                .modified()
                .unwrap()
        };
        let before: Vec<_> = FILES.iter().map(|(name, _)| modified(name)).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| write_embedded_teacher(&teacher)))
                .collect();
            for worker in workers {
                worker.join().unwrap().unwrap();
            }
        });
        let after: Vec<_> = FILES.iter().map(|(name, _)| modified(name)).collect();
        assert_eq!(before, after, "an identical teacher was rewritten");
    }
}
