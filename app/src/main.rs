//! Without arguments the binary opens the desktop window; with a subcommand
//! it is the headless CLI (`hangar run`, `hangar host`, `hangar bench`).
//! Both drive the same engine.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hangar::logging::init();
    let args = hangar::cli::Cli::parse();
    match hangar::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hangar: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
