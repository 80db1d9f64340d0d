//! The process's stdio as the engine holds it: pipes' engine ends or the
//! terminal's master, read into events and the console log, written with
//! the user's input.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::Supervisor;
use crate::{ContainerError, InternalError};
use hangar_api::{Event, OutputStream};

/// After the init exits, how long the rest of its output may take to drain.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The stdio the engine keeps: pipes' engine ends, or the terminal.
pub(super) enum Stdio {
    Pipes {
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    },
    Terminal(Option<File>),
}

impl Supervisor {
    /// One read from a readable output; end-of-file or an error (EIO on a
    /// terminal whose process is gone) closes our end.
    pub(super) fn read_output(&mut self, stdio: &mut Stdio, stream: OutputStream) {
        if let Some(data) = read_some(stdio, stream) {
            self.output(stream, data);
        }
    }

    fn output(&mut self, stream: OutputStream, data: Vec<u8>) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write_all(&data) {
                log::warn!(
                    "container {}: log write failed, logging stops: {e}",
                    self.id
                );
                self.log = None;
            }
        }
        self.emit(Event::Output {
            id: self.id.clone(),
            stream,
            bytes: data,
        });
    }

    /// Reads what is left once the container is gone, until every stream
    /// ends (all writers closed) or [`DRAIN_TIMEOUT`].
    pub(super) fn drain_output(&mut self, stdio: &mut Stdio) {
        let until = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let outputs = output_fds(stdio);
            let now = Instant::now();
            if outputs.is_empty() || now >= until {
                return;
            }
            let mut fds: Vec<libc::pollfd> = outputs.iter().map(|(fd, _)| pollfd(*fd)).collect();
            if poll(&mut fds, until - now).is_err() {
                return;
            }
            for (i, (_, stream)) in outputs.iter().enumerate() {
                if fds[i].revents != 0 {
                    self.read_output(stdio, *stream);
                }
            }
        }
    }
}

/// One read from a readable output; end-of-file or an error (EIO on a
/// terminal whose process is gone) closes our end.
pub(super) fn read_some(stdio: &mut Stdio, stream: OutputStream) -> Option<Vec<u8>> {
    let slot = stream_slot(stdio, stream);
    let f = slot.as_mut()?;
    let mut buf = vec![0u8; 64 * 1024];
    match f.read(&mut buf) {
        Ok(0) => *slot = None,
        Ok(n) => {
            buf.truncate(n);
            return Some(buf);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(_) => *slot = None,
    }
    None
}

fn stream_slot(stdio: &mut Stdio, stream: OutputStream) -> &mut Option<File> {
    match (stdio, stream) {
        (Stdio::Pipes { stderr, .. }, OutputStream::Stderr) => stderr,
        (Stdio::Pipes { stdout, .. }, _) => stdout,
        (Stdio::Terminal(m), _) => m,
    }
}

/// The output descriptors still open.
pub(super) fn output_fds(stdio: &Stdio) -> Vec<(RawFd, OutputStream)> {
    match stdio {
        Stdio::Pipes { stdout, stderr, .. } => stdout
            .iter()
            .map(|f| (f.as_raw_fd(), OutputStream::Stdout))
            .chain(stderr.iter().map(|f| (f.as_raw_fd(), OutputStream::Stderr)))
            .collect(),
        Stdio::Terminal(m) => m
            .iter()
            .map(|f| (f.as_raw_fd(), OutputStream::Terminal))
            .collect(),
    }
}

pub(super) fn write_input(stdio: &mut Stdio, bytes: &[u8]) {
    let target = match stdio {
        Stdio::Pipes { stdin, .. } => stdin,
        Stdio::Terminal(m) => m,
    };
    if let Some(f) = target {
        // A process that stopped reading its input: drop the input, never
        // the supervisor.
        if f.write_all(bytes).is_err() {
            if let Stdio::Pipes { stdin, .. } = stdio {
                *stdin = None;
            }
        }
    }
}

pub(super) fn resize(stdio: &Stdio, cols: u16, rows: u16) {
    if let Stdio::Terminal(Some(m)) = stdio {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on a pty master with a valid winsize pointer.
        unsafe { libc::ioctl(m.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

pub(super) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(super) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid slice of pollfd for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for f in fds.iter_mut() {
            f.revents = 0;
        }
    }
    Ok(())
}

/// Pipes for a process without a terminal: our ends, and the process's
/// (stdin, stdout, stderr) to send to the helper. Without `input`, our end
/// of stdin is closed at once (the process reads end-of-file).
pub(super) fn stdio_pipes(input: bool) -> Result<(Stdio, Vec<OwnedFd>), ContainerError> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let ours = Stdio::Pipes {
        stdin: input.then(|| File::from(in_w)),
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
    };
    Ok((ours, vec![in_r, out_w, err_w]))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(InternalError::Pipe(io::Error::last_os_error()).into());
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
