//! Progress bars for long operator commands: on stderr, so stdout stays the data, and hidden
//! when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` units called `what`, with rate and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}
