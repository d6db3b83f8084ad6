//! `--help` for the benchmark programs: prints the program's module documentation.

/// Exits after printing the `//!` lines of `source` (the program's own file, via
/// `include_str!`) when the arguments ask for help (`-h`, `--help`).
pub fn exit_on_help(source: &str) {
    if !std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        return;
    }
    for line in source.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        println!("{}", doc.strip_prefix(' ').unwrap_or(doc));
    }
    std::process::exit(0);
}
