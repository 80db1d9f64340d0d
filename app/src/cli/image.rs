//! `hangar image import|ls|rm`: the container image store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hangar_engine::images::{ImageStore, ImportProgress, ImportStage};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    what: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The layout directory or archive.
        source: PathBuf,
        /// Name in the store (default: the name the image carries).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    Ls,
    /// Remove an image (its layers stay while other images use them).
    Rm {
        /// The image's name.
        name: String,
    },
}

pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open_default().context("cannot open the image store")?;
    match args.what {
        ImageCommand::Import { source, name } => {
            let mut last_line = String::new();
            let mut progress = |p: ImportProgress| {
                let line = progress_line(&p);
                // Redraw only when the text changes: the callback is frequent.
                if line != last_line {
                    eprint!("\r{line:<60}");
                    let _ = std::io::stderr().flush();
                    last_line = line;
                }
            };
            let record = store
                .import(&source, name.as_deref(), &mut progress)
                .with_context(|| format!("cannot import {}", source.display()))?;
            eprintln!();
            println!(
                "imported {} ({} layers, {} KiB)",
                record.name,
                record.layers.len(),
                record.size().div_ceil(1024)
            );
        }
        ImageCommand::Ls => {
            println!(
                "{:<30} {:>7} {:>10}  MANIFEST",
                "NAME", "LAYERS", "SIZE KiB"
            );
            for r in store.list().context("cannot list images")? {
                let short = r
                    .manifest_digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&r.manifest_digest);
                println!(
                    "{:<30} {:>7} {:>10}  {}",
                    r.name,
                    r.layers.len(),
                    r.size().div_ceil(1024),
                    &short[..short.len().min(12)]
                );
            }
        }
        ImageCommand::Rm { name } => {
            store
                .remove(&name)
                .with_context(|| format!("cannot remove {name}"))?;
            println!("removed {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_line(p: &ImportProgress) -> String {
    let stage = match p.stage {
        ImportStage::Reading => "reading",
        ImportStage::Verifying => "verifying",
        ImportStage::Unpacking => "unpacking",
        ImportStage::Done => "done",
    };
    let pct = p
        .bytes_done
        .saturating_mul(100)
        .checked_div(p.bytes_total)
        .unwrap_or(100);
    format!(
        "{stage}: {pct}% ({}/{} layers)",
        p.layers_done, p.layers_total
    )
}
