//! Errors of the image store. Each says what was being done and keeps the
//! cause as its source, so a message never repeats its source's text.

use std::path::{Path, PathBuf};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No data directory could be determined.
    #[error("cannot determine Hangar's data directory (is HOME set?)")]
    NoDataDir,
    /// A file or directory operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A blob's content does not match its digest or size.
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest (or size) the image claims.
        expected: String,
        /// What the content has.
        actual: String,
    },
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("unsupported or malformed digest {0:?}")]
    BadDigest(String),
    /// The source is not an image in a format we read.
    #[error("not a valid image")]
    Format(#[source] FormatError),
    /// A JSON document could not be parsed or written.
    #[error("invalid {what}")]
    Json {
        /// Which document.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A layer or archive is damaged (bad compression, truncated tar).
    #[error("damaged archive")]
    Corrupt(#[source] ArchiveFault),
    /// A layer entry that tries to leave its root.
    #[error("unsafe entry {path:?} in a layer: {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The image is larger than the store's size cap.
    #[error("the image is larger than the size cap of {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// No image of that name.
    #[error("no image named {0:?}")]
    NotFound(String),
    /// A name that cannot name an image.
    #[error("{0:?} is not a valid image name")]
    BadName(String),
    /// Containers still use the image (their roots stack its layers).
    #[error("image {name:?} is used by container(s) {containers}: remove them first")]
    InUse {
        /// The image.
        name: String,
        /// Their ids.
        containers: String,
    },
    /// A registry pull failed (network, registry refusal, no such image).
    #[error("pull failed")]
    Pull(#[source] PullError),
}

impl ImageError {
    pub(super) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
        move |source| ImageError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Json { what, source }
    }
}

impl From<FormatError> for ImageError {
    fn from(e: FormatError) -> Self {
        ImageError::Format(e)
    }
}

impl From<PullError> for ImageError {
    fn from(e: PullError) -> Self {
        ImageError::Pull(e)
    }
}

impl From<ArchiveFault> for ImageError {
    fn from(e: ArchiveFault) -> Self {
        ImageError::Corrupt(e)
    }
}

/// What makes a source not an image we read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Neither an OCI layout nor a docker-archive.
    #[error(
        "{} has neither index.json (OCI layout) nor manifest.json (docker-archive)",
        path.display()
    )]
    UnknownLayout {
        /// The source.
        path: PathBuf,
    },
    /// The config's layer digests do not pair with the manifest's layers.
    #[error("the config lists {diff_ids} layer digests for {layers} layers")]
    LayerCount {
        /// Digests in the config's `rootfs.diff_ids`.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// The manifest's bytes are not text.
    #[error("the manifest is not UTF-8")]
    ManifestNotUtf8(#[source] std::string::FromUtf8Error),
    /// A JSON document larger than any real one.
    #[error("{file} is too large")]
    DocumentTooLarge {
        /// The document's path in the image.
        file: String,
    },
    /// An index without an image for this host.
    #[error("no image for linux/{arch} in the index")]
    NoPlatform {
        /// This host's architecture.
        arch: &'static str,
    },
    /// Indexes of indexes, deeper than an image needs.
    #[error("indexes nested too deeply")]
    NestedTooDeep,
    /// A docker-archive whose manifest.json lists nothing.
    #[error("manifest.json lists no image")]
    NoImageListed,
    /// A descriptor without its digest.
    #[error("{what} without a digest")]
    MissingDigest {
        /// Which kind of descriptor.
        what: &'static str,
    },
}

/// Why a registry pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("'{reference}' is not an image reference")]
    BadReference {
        /// The reference given.
        reference: String,
        /// Why not.
        source: oci_client::ParseError,
    },
    /// Plain HTTP to a registry on another machine.
    #[error(
        "plain HTTP is only for a registry on this machine (localhost, 127.0.0.1, [::1]), not {registry}"
    )]
    PlainHttpRemote {
        /// The registry asked for.
        registry: String,
    },
    /// The runtime the client runs on could not start.
    #[error("cannot start the network runtime")]
    NetworkRuntime(#[source] std::io::Error),
    /// The registry did not give a document or blob.
    #[error("cannot fetch the {what} of {reference}")]
    Registry {
        /// What was fetched.
        what: &'static str,
        /// The image.
        reference: String,
        /// What the client says.
        source: RegistryFault,
    },
    /// A multi-platform image without one for this host.
    #[error("{reference} has no linux/{arch} image")]
    NoPlatform {
        /// The image.
        reference: String,
        /// This host's architecture.
        arch: &'static str,
    },
}

/// How an archive or layer is damaged.
#[derive(Debug)]
pub enum ArchiveFault {
    /// Reading or decompressing it failed. Shown by the first line of the
    /// error, shortened (the tar crate quotes the bytes it choked on: a
    /// page of them for a file that is no archive); what the error wraps,
    /// if anything, is the source.
    Read(std::io::Error),
    /// An entry ends before its size.
    Truncated {
        /// The entry, as shown.
        entry: String,
    },
    /// A zstd frame that cannot be decoded.
    Zstd(ruzstd::decoding::errors::FrameDecoderError),
}

impl std::fmt::Display for ArchiveFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveFault::Read(e) => f.write_str(&short_reason(&e.to_string())),
            ArchiveFault::Truncated { entry } => write!(f, "{entry}: truncated"),
            ArchiveFault::Zstd(_) => f.write_str("zstd"),
        }
    }
}

impl std::error::Error for ArchiveFault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The I/O error's own text is shown above; an error it wraps
            // has its text shown by `e` too, so only what that wraps
            // follows.
            ArchiveFault::Read(e) => e.source(),
            ArchiveFault::Truncated { .. } => None,
            ArchiveFault::Zstd(e) => Some(e),
        }
    }
}

/// The first line of `s`, at most 100 characters, printable.
fn short_reason(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let mut out: String = line.chars().filter(|c| !c.is_control()).take(100).collect();
    if line.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// oci-client's error with its chain said once: some of its messages
/// already include their source's text, which then is skipped.
#[derive(Debug)]
pub struct RegistryFault(pub oci_client::errors::OciDistributionError);

impl std::fmt::Display for RegistryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RegistryFault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let shown = self.0.to_string();
        let mut cur = std::error::Error::source(&self.0);
        while let Some(inner) = cur {
            if !shown.contains(&inner.to_string()) {
                return Some(inner);
            }
            cur = inner.source();
        }
        None
    }
}
