//! Progress bars for the slow parts of loading (downloads, extraction, decoding folders).
//!
//! They draw on stderr only, so `--json` output on stdout stays clean, and indicatif hides them
//! when stderr is not a terminal, so logs and tests get no control sequences.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar of `len` steps (bytes when `bytes` is true), labelled `message`.
pub(crate) fn bar(len: u64, message: &str, bytes: bool) -> ProgressBar {
    let template = if bytes {
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
    } else {
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})"
    };
    let style = ProgressStyle::with_template(template)
        .expect("progress template is valid")
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(message.to_string())
}
