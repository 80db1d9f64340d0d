//! `hangar image import|ls|rm`: the container image store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hangar_engine::images::{ImageStore, ImportProgress, ImportStage, RegistryProtocol};

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
    /// Pull an image from an OCI registry (e.g. localhost:5000/tools:1.0).
    Pull {
        /// The image reference.
        reference: String,
        /// Name in the store (default: the reference's repository name).
        #[arg(long)]
        name: Option<String>,
        /// Plain HTTP instead of HTTPS (only for a registry on this machine).
        #[arg(long)]
        http: bool,
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
            let record = store
                .import(&source, name.as_deref(), &mut progress_printer())
                .with_context(|| format!("cannot import {}", source.display()))?;
            eprintln!();
            println!(
                "imported {} ({} layers, {} KiB)",
                record.name,
                record.layers.len(),
                record.size().div_ceil(1024)
            );
        }
        ImageCommand::Pull {
            reference,
            name,
            http,
        } => {
            let name = match name {
                Some(n) => n,
                None => default_name(&reference)?,
            };
            let protocol = if http {
                RegistryProtocol::Http
            } else {
                RegistryProtocol::Https
            };
            let record = store
                .pull(&reference, &name, protocol, &mut progress_printer())
                .with_context(|| format!("cannot pull {reference}"))?;
            eprintln!();
            println!(
                "pulled {} as {} ({} layers, {} KiB)",
                reference,
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

/// A progress callback drawing one line on stderr, redrawn only when its
/// text changes (the callback is frequent).
fn progress_printer() -> impl FnMut(ImportProgress) {
    let mut last_line = String::new();
    move |p: ImportProgress| {
        let line = progress_line(&p);
        if line != last_line {
            eprint!("\r{line:<60}");
            let _ = std::io::stderr().flush();
            last_line = line;
        }
    }
}

/// `registry/path/repo:tag` → `repo:tag` (`repo` for `@digest`).
fn default_name(reference: &str) -> anyhow::Result<String> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let name = last.split('@').next().unwrap_or(last);
    anyhow::ensure!(
        !name.is_empty(),
        "cannot name an image after '{reference}': give --name"
    );
    Ok(name.to_string())
}

fn progress_line(p: &ImportProgress) -> String {
    let stage = match p.stage {
        ImportStage::Downloading => "downloading",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_repository() {
        assert_eq!(
            default_name("localhost:5000/a/tools:1.0").unwrap(),
            "tools:1.0"
        );
        assert_eq!(
            default_name("localhost:5000/tools@sha256:ab").unwrap(),
            "tools"
        );
        assert!(default_name("localhost:5000/").is_err());
    }
}
