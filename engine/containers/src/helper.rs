//! The container helper process and its protocol.
//!
//! libcontainer forks with raw `clone3` and changes the process-wide
//! working directory, so it must not run inside the multi-threaded app.
//! Each container is driven through one helper: our own binary re-executed
//! (the app runs `hangar container-helper`; tests run the engine's
//! `hangar-container-helper`), single-threaded, in its own session (a
//! terminal's Ctrl-C reaches the app, which stops containers gracefully).
//! It owns the libcontainer calls, is the parent of the container's init
//! and reaps it, and passes the terminal's master back as a file
//! descriptor.
//!
//! Wire: one `SOCK_SEQPACKET` socket pair, fd [`HELPER_FD`] in the helper;
//! each message is one JSON packet, file descriptors ride along as
//! `SCM_RIGHTS`. Requests are answered in order; [`Reply::Exited`] is sent
//! unasked when the init ends. If the engine's end closes (the app died),
//! the helper kills and deletes its container and exits: nothing is left
//! running with nobody to stop it.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{error_text, ContainerError, HelperError, HelperReported};

/// The fd number of the helper's end of the socket.
pub const HELPER_FD: RawFd = 3;
/// Set (to [`HELPER_FD`]) in the helper's environment; its absence means
/// the binary was not started by the engine.
pub const HELPER_FD_ENV: &str = "HANGAR_HELPER_FD";

const MAX_MESSAGE: usize = 64 * 1024;
const MAX_FDS: usize = 4;

/// How to start a helper: a program and its arguments. The app passes its
/// own executable and `container-helper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Engine → helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Create the container (not started). Without a terminal, three fds
    /// (stdin, stdout, stderr) come with the message.
    Create {
        id: String,
        state_root: PathBuf,
        bundle: PathBuf,
        terminal: bool,
        /// The overlay root to mount first, in the helper's own mount
        /// namespace.
        overlay: OverlayRoot,
    },
    /// Start the created container's process.
    Start,
    /// Signal the init (or, `all`, every process of the container).
    Kill { signal: i32, all: bool },
    /// Remove runtime state and cgroup (kills what is left).
    Delete,
    /// Start another process in the running container, described by an
    /// OCI process JSON file. Without a terminal, three fds come along.
    Exec { process: PathBuf, terminal: bool },
}

/// An overlayfs root: the image's layers (bottom first) under the
/// container's own upper directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OverlayRoot {
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

/// Helper → engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Created; the init's host pid. With a terminal, its master fd comes
    /// with the message.
    Created { pid: i32 },
    /// The request succeeded.
    Done,
    /// The request failed.
    Failed { message: String },
    /// The init exited; raw wait status.
    Exited { status: i32 },
    /// An exec'd process runs; its host pid (terminal master attached).
    ExecStarted { pid: i32 },
    /// An exec'd process exited; raw wait status.
    ExecExited { pid: i32, status: i32 },
    /// Sent once, unasked, when the helper is in its own namespaces (or
    /// `Failed` instead, saying why it is not): before it, its pid still
    /// names the host's namespaces.
    Ready,
}

// ------------------------------------------------------------------ wire --

fn send_msg<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 8]; // aligned room for MAX_FDS fds
                              // SAFETY: a zeroed msghdr is valid; we fill the pointers below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        if fds.len() > MAX_FDS || space > size_of::<[u64; 8]>() {
            return Err(io::Error::other("too many fds for one message"));
        }
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space;
        // SAFETY: msg_control points at `space` writable, aligned bytes, so
        // the first header and its data fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: `hdr` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `recvmsg`: bytes into `buf`, the fds that came along (owned,
/// close-on-exec), and the message flags.
fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, i32)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; pointers filled below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = size_of::<[u64; 8]>();
    let n = loop {
        // SAFETY: buffers live for the call; MSG_CMSG_CLOEXEC keeps received
        // fds out of processes we spawn later.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into cbuf; each
    // SCM_RIGHTS payload holds fds that are now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok((n, fds, hdr.msg_flags))
}

/// One message and its fds; `None` at end of stream.
fn recv_msg<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds, flags) = recv_with_fds(sock, &mut buf)?;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("message truncated"));
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

// ----------------------------------------------------------- engine side --

/// A running helper process, seen from the engine.
pub(crate) struct HelperProcess {
    child: Child,
    sock: OwnedFd,
    /// Unasked messages (exits) that arrived while waiting for a reply.
    pending: std::collections::VecDeque<Reply>,
    /// It said [`Reply::Ready`].
    ready: bool,
}

/// How long a helper may take to start and make its namespaces.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl HelperProcess {
    /// Starts a helper; it then waits for requests.
    pub(crate) fn spawn(cmd: &HelperCommand) -> Result<Self, ContainerError> {
        let (ours, theirs) = UnixDatagram::pair_seqpacket().map_err(HelperError::SocketPair)?;
        let theirs_raw = theirs.as_raw_fd();
        let mut c = std::process::Command::new(&cmd.program);
        c.args(&cmd.args)
            .env(HELPER_FD_ENV, HELPER_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls (setsid, dup2) between fork
        // and exec; dup2 onto fd 3 also clears its close-on-exec flag.
        unsafe {
            c.pre_exec(move || {
                libc::setsid();
                if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(|source| HelperError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        drop(theirs);
        Ok(Self {
            child,
            sock: ours,
            pending: std::collections::VecDeque::new(),
            ready: false,
        })
    }

    /// Waits until the helper is in its own namespaces: nothing may use
    /// its pid before (pasta would serve the host's network namespace).
    pub(crate) fn wait_ready(&mut self) -> Result<(), ContainerError> {
        let until = std::time::Instant::now() + HELPER_READY_TIMEOUT;
        while !self.ready {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            let n =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.died(e));
            }
            if n == 0 {
                return Err(HelperError::NotReady {
                    timeout: HELPER_READY_TIMEOUT,
                }
                .into());
            }
            match recv_msg::<Reply>(self.sock.as_fd()) {
                Ok(Some((Reply::Ready, _))) => self.ready = true,
                Ok(Some((Reply::Failed { message }, _))) => {
                    return Err(HelperError::SetUp(HelperReported { message }).into())
                }
                Ok(Some((other, _))) => self.pending.push_back(other),
                Ok(None) => return Err(self.died(io::Error::other("it closed its socket"))),
                Err(e) => return Err(self.died(e)),
            }
        }
        Ok(())
    }

    /// Its pid (rootless: whose network namespace the container uses).
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process is still there (a warm helper may have died).
    pub(crate) fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The socket, for polling for [`Reply::Exited`].
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends a request and waits for its reply (exits met on the way are
    /// kept for [`Self::take_unasked`]).
    pub(crate) fn request(
        &mut self,
        req: &Request,
        fds: &[RawFd],
    ) -> Result<(Reply, Vec<OwnedFd>), ContainerError> {
        send_msg(self.sock.as_fd(), req, fds).map_err(|e| self.died(e))?;
        loop {
            match recv_msg::<Reply>(self.sock.as_fd()) {
                Ok(Some((r @ (Reply::Exited { .. } | Reply::ExecExited { .. }), _))) => {
                    self.pending.push_back(r)
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => return Err(self.died(io::Error::other("it closed its socket"))),
                Err(e) => return Err(self.died(e)),
            }
        }
    }

    /// Reads one unasked message (call when the socket is readable).
    pub(crate) fn read_event(&mut self) -> Result<Option<Reply>, ContainerError> {
        if let Some(r) = self.pending.pop_front() {
            return Ok(Some(r));
        }
        match recv_msg::<Reply>(self.sock.as_fd()) {
            Ok(Some((r, _))) => Ok(Some(r)),
            Ok(None) => Err(self.died(io::Error::other("it closed its socket"))),
            Err(e) => Err(self.died(e)),
        }
    }

    /// An unasked message received while waiting for a reply.
    pub(crate) fn take_unasked(&mut self) -> Option<Reply> {
        self.pending.pop_front()
    }

    fn died(&mut self, source: io::Error) -> ContainerError {
        let exit = self.child.try_wait().ok().flatten();
        HelperError::LostContact { exit, source }.into()
    }

    /// Closes the socket (the helper then cleans up and exits) and reaps it.
    pub(crate) fn finish(self) {
        let HelperProcess {
            mut child, sock, ..
        } = self;
        drop(sock);
        // Reaped off the caller's path: the helper exits once it sees the
        // socket close, but that is its business, not the container's
        // exit latency. Bounded: one that hangs in the runtime is killed.
        let reaper = move || {
            for _ in 0..500 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            log::warn!("container helper {} did not exit; killing it", child.id());
            let _ = child.kill();
            let _ = child.wait();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("helper-reaper".into())
            .spawn(reaper)
        {
            log::warn!("cannot start a thread to reap a container helper: {e}");
        }
    }
}

trait SeqpacketPair: Sized {
    fn pair_seqpacket() -> io::Result<(OwnedFd, OwnedFd)>;
}

impl SeqpacketPair for UnixDatagram {
    fn pair_seqpacket() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are new descriptors that nothing else owns.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }
}

// ----------------------------------------------------------- helper side --

/// The helper's main: call it from a binary when [`HELPER_FD_ENV`] is set.
/// Returns the process exit code.
pub fn helper_main() -> i32 {
    if std::env::var(HELPER_FD_ENV).ok().as_deref() != Some("3") {
        eprintln!("this is Hangar's container helper; the engine starts it, not people");
        return 2;
    }
    // SAFETY: fd 3 was placed by the engine's spawn and is ours alone.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    // Orphans of the container come to us to be reaped, not to the host's
    // init.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: geteuid has no preconditions.
    let rootless = unsafe { libc::geteuid() } != 0;
    // A failure is kept and given as the answer to the first request: the
    // engine has nobody else to hear it from.
    let setup_error = enter_namespaces(rootless)
        .err()
        .map(RequestError::Namespaces);
    let first = match &setup_error {
        None => Reply::Ready,
        Some(e) => Reply::Failed {
            message: error_text(e),
        },
    };
    if send_msg(sock.as_fd(), &first, &[]).is_err() {
        return 1;
    }
    let mut h = Helper {
        rootless,
        setup_error,
        sock,
        container: None,
        init_pidfd: None,
        init_pid: 0,
        state_root: PathBuf::new(),
        id: String::new(),
        execs: Vec::new(),
    };
    h.run();
    0
}

/// Why a request failed in the helper. It goes to the engine as its
/// chain's text ([`Reply::Failed`]), where it becomes a
/// [`HelperReported`].
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("cannot make the helper's namespaces")]
    Namespaces(#[source] io::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Runtime(#[from] libcontainer::error::LibcontainerError),
    #[error("cannot use that signal")]
    Signal(#[source] libcontainer::signal::SignalError<i32>),
    #[error("no container has been created")]
    NoContainer,
    #[error("this helper already has a container")]
    HasContainer,
    #[error("the container's terminal did not arrive")]
    InitTerminal(#[source] io::Error),
    #[error("the process's terminal did not arrive")]
    ExecTerminal(#[source] io::Error),
    #[error("the runtime reported no init process")]
    NoInit,
    #[error("cannot open a pidfd for process {pid}")]
    Pidfd { pid: i32, source: io::Error },
    #[error("cannot listen on the console socket {}", path.display())]
    ConsoleSocket { path: PathBuf, source: io::Error },
    #[error("without a terminal, stdin, stdout and stderr must come along")]
    NoStdio,
}

struct Helper {
    /// Started by an unprivileged user: we are root only in our own user
    /// namespace.
    rootless: bool,
    /// Why the helper's namespaces could not be made: every request gets
    /// it as its answer.
    setup_error: Option<RequestError>,
    sock: OwnedFd,
    container: Option<libcontainer::container::Container>,
    init_pidfd: Option<OwnedFd>,
    init_pid: i32,
    state_root: PathBuf,
    id: String,
    /// Exec'd processes still running: pid and pidfd.
    execs: Vec<(i32, OwnedFd)>,
}

impl Helper {
    fn run(&mut self) {
        loop {
            let mut pfds = vec![libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let watched = self
                .init_pidfd
                .iter()
                .chain(self.execs.iter().map(|(_, fd)| fd));
            pfds.extend(watched.map(|p| libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            // SAFETY: `pfds` is a valid array of pollfd for the call.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if pfds[1..].iter().any(|p| p.revents != 0) {
                self.reap();
            }
            if pfds[0].revents != 0 {
                match recv_msg::<Request>(self.sock.as_fd()) {
                    Ok(Some((req, fds))) => {
                        let (reply, out_fds) = self.handle(req, fds);
                        let raw: Vec<RawFd> = out_fds.iter().map(|f| f.as_raw_fd()).collect();
                        if send_msg(self.sock.as_fd(), &reply, &raw).is_err() {
                            break;
                        }
                    }
                    // The engine is gone (or spoke nonsense): clean up, leave.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.abandon();
    }

    fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
        if let Some(e) = &self.setup_error {
            return (
                Reply::Failed {
                    message: error_text(e),
                },
                vec![],
            );
        }
        let r = match req {
            Request::Create {
                id,
                state_root,
                bundle,
                terminal,
                overlay,
            } => match self.mount_root(&overlay) {
                Ok(()) => self.create(&id, &state_root, &bundle, terminal, fds),
                Err(e) => Err(e),
            },
            Request::Start => self
                .with_container(|c| c.start())
                .map(|()| (Reply::Done, vec![])),
            Request::Kill { signal, all } => match libcontainer::signal::Signal::try_from(signal) {
                Ok(s) => self
                    .with_container(|c| c.kill(s, all))
                    .map(|()| (Reply::Done, vec![])),
                Err(e) => Err(RequestError::Signal(e)),
            },
            Request::Delete => {
                let r = self.with_container(|c| c.delete(true));
                if r.is_ok() {
                    self.container = None;
                }
                self.reap();
                r.map(|()| (Reply::Done, vec![]))
            }
            Request::Exec { process, terminal } => self.exec(&process, terminal, fds),
        };
        // The error crosses the socket as its chain's text.
        r.unwrap_or_else(|e| {
            (
                Reply::Failed {
                    message: error_text(&e),
                },
                vec![],
            )
        })
    }

    /// Mounts the container's overlay root, here in our own mount
    /// namespace: the host never sees it, and it goes away with the helper
    /// and the container, whatever happens to the app.
    fn mount_root(&self, overlay: &OverlayRoot) -> Result<(), RequestError> {
        Ok(super::rootfs::mount_overlay(
            &overlay.lower,
            &overlay.upper,
            &overlay.work,
            &overlay.target,
            self.rootless,
        )?)
    }

    fn with_container(
        &mut self,
        f: impl FnOnce(
            &mut libcontainer::container::Container,
        ) -> Result<(), libcontainer::error::LibcontainerError>,
    ) -> Result<(), RequestError> {
        match &mut self.container {
            Some(c) => Ok(f(c)?),
            None => Err(RequestError::NoContainer),
        }
    }

    fn create(
        &mut self,
        id: &str,
        state_root: &Path,
        bundle: &Path,
        terminal: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<(Reply, Vec<OwnedFd>), RequestError> {
        if self.container.is_some() {
            return Err(RequestError::HasContainer);
        }
        let (builder, console) =
            builder_with_stdio(id, state_root, &format!("{id}.console"), terminal, fds)?;
        let built = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        let container = match built {
            Ok(c) => c,
            Err(e) => {
                if let Some((_, p)) = &console {
                    let _ = std::fs::remove_file(p);
                }
                // A failed create leaves its state directory behind.
                let _ = std::fs::remove_dir_all(state_root.join(id));
                self.reap();
                return Err(e.into());
            }
        };
        let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
        self.container = Some(container);
        self.id = id.to_string();
        self.state_root = state_root.to_path_buf();
        let mut out = Vec::new();
        if let Some((listener, path)) = console {
            let master = receive_console(&listener);
            let _ = std::fs::remove_file(&path);
            match master {
                Ok(m) => out.push(m),
                Err(e) => return Err(RequestError::InitTerminal(e)),
            }
        }
        if pid <= 0 {
            return Err(RequestError::NoInit);
        }
        self.init_pidfd = Some(pidfd_open(pid)?);
        self.init_pid = pid;
        Ok((Reply::Created { pid }, out))
    }

    fn exec(
        &mut self,
        process: &Path,
        terminal: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<(Reply, Vec<OwnedFd>), RequestError> {
        if self.container.is_none() {
            return Err(RequestError::NoContainer);
        }
        let name = format!("{}.exec{}.console", self.id, self.execs.len());
        let (builder, console) =
            builder_with_stdio(&self.id, &self.state_root, &name, terminal, fds)?;
        let built = builder
            .as_tenant()
            .with_process(Some(process))
            .with_detach(true)
            .build();
        let pid = match built {
            Ok(p) => p.as_raw(),
            Err(e) => {
                if let Some((_, p)) = &console {
                    let _ = std::fs::remove_file(p);
                }
                self.reap();
                return Err(e.into());
            }
        };
        let mut out = Vec::new();
        if let Some((listener, path)) = console {
            let master = receive_console(&listener);
            let _ = std::fs::remove_file(&path);
            out.push(master.map_err(RequestError::ExecTerminal)?);
        }
        self.execs.push((pid, pidfd_open(pid)?));
        Ok((Reply::ExecStarted { pid }, out))
    }

    /// Reaps every child that has exited: the init and exec'd processes
    /// are reported, orphans of the container are just collected.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer, never blocking.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            let reply = if r == self.init_pid && self.init_pidfd.is_some() {
                self.init_pidfd = None;
                Reply::Exited { status }
            } else if let Some(i) = self.execs.iter().position(|(p, _)| *p == r) {
                self.execs.remove(i);
                Reply::ExecExited { pid: r, status }
            } else {
                continue;
            };
            let _ = send_msg(self.sock.as_fd(), &reply, &[]);
        }
    }

    /// The engine went away: leave nothing running.
    fn abandon(&mut self) {
        if let Some(c) = &mut self.container {
            if let Ok(kill) = libcontainer::signal::Signal::try_from(libc::SIGKILL) {
                let _ = c.kill(kill, true);
            }
            let _ = c.delete(true);
        }
        self.container = None;
        self.reap();
    }
}

/// The helper's own namespaces, which its one container shares: a mount
/// namespace (the container's root is mounted there, out of the host's
/// sight, and goes away with them) and a network namespace (pasta attaches
/// to it through the helper: the container's own init is not dumpable
/// until it starts, and libcontainer makes the helper non-dumpable at
/// create, so pasta attaches before). Rootless, first a user namespace in
/// which our own uid and gid are root (nothing else is mapped: no setuid
/// helper is needed), the way podman runs its OCI runtime; libcontainer
/// then sees it runs in a user namespace and acts rootless (bind-mounted
/// devices, no mknod), with the spec needing no user namespace of its own
/// — which would also switch it to systemd cgroups.
fn enter_namespaces(rootless: bool) -> io::Result<()> {
    // SAFETY: getters with no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET;
    if rootless {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare with flags only; the helper is single-threaded, as
    // CLONE_NEWUSER requires.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if rootless {
        // setgroups must be denied before an unprivileged gid_map write.
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    // Our mounts stay ours; the host's later ones (a volume's disk) still
    // reach us.
    // SAFETY: NUL-terminated literals; no data pointer.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A libcontainer builder for container `id` with its stdio: a console
/// socket (named `console_name` in the state root) whose listener the
/// caller accepts on after the build, or the three fds the engine sent.
fn builder_with_stdio(
    id: &str,
    state_root: &Path,
    console_name: &str,
    terminal: bool,
    fds: Vec<OwnedFd>,
) -> Result<
    (
        libcontainer::container::builder::ContainerBuilder,
        Option<(UnixListener, PathBuf)>,
    ),
    RequestError,
> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let builder =
        ContainerBuilder::new(id.to_string(), SyscallType::Linux).with_root_path(state_root)?;
    if terminal {
        let path = state_root.join(console_name);
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(source) => return Err(RequestError::ConsoleSocket { path, source }),
        };
        return Ok((
            builder.with_console_socket(Some(&path)),
            Some((listener, path)),
        ));
    }
    let mut it = fds.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(i), Some(o), Some(e)) => {
            Ok((builder.with_stdin(i).with_stdout(o).with_stderr(e), None))
        }
        _ => Err(RequestError::NoStdio),
    }
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, RequestError> {
    // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(RequestError::Pidfd {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Accepts libcontainer's connection on the console socket and receives
/// the pty master it sends.
fn receive_console(listener: &UnixListener) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no connection in 10 s",
        ));
    }
    let (stream, _) = listener.accept()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    recv_fd(&stream)
}

fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let (_, fds, _) = recv_with_fds(stream.as_fd(), &mut buf)?;
    fds.into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no file descriptor in the message"))
}
