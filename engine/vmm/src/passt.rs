//! User-mode networking for a VM: one `passt` process per VM, connected to
//! the VM's virtio-net card over a Unix stream socket pair (QEMU's socket
//! protocol: each Ethernet frame preceded by its 32-bit big-endian length).
//!
//! passt gives the guest the host's own address and gateway by DHCP (and
//! NDP/DHCPv6 when the host has IPv6), answers ARP, and turns the guest's
//! TCP/UDP/ICMP into ordinary host sockets, so no root, tap device, bridge
//! or firewall rule is involved. Measured on Debian 12's passt
//! (0.0~git20230309):
//!
//! * the gateway address maps to the host's loopback: a guest connecting to
//!   GATEWAY:PORT reaches a server on the host's 127.0.0.1:PORT;
//! * DNS needs no option: passt hands out the host's name servers from
//!   /etc/resolv.conf, and when that names a loopback resolver
//!   (systemd-resolved's 127.0.0.53) it hands out the gateway instead and
//!   forwards the queries to that resolver;
//! * its default MTU (65520, given to the guest by DHCP) does not fit our
//!   card's receive buffers (no mergeable buffers: one 1514-byte frame per
//!   buffer), so we ask for 1500;
//! * as root it drops to `nobody` by itself, which is fine here: it needs
//!   no file after start-up, and the socket is inherited;
//! * a forwarded port it cannot bind makes it exit with
//!   "Failed to bind any port for '-t ...'".
//!
//! The command line: `passt --foreground --quiet --fd N --mtu 1500 -u none`
//! and `-t 127.0.0.1/HOST:GUEST` per forward (`-t none` without any). With
//! `--fd`, passt quits once the socket closes, so it never outlives the
//! engine; no PID file or socket file is written.

use std::io::{self, BufRead, BufReader};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hangar_api::config::NetworkConfig;
use hangar_devices::bus::lock;

/// The MTU passt announces by DHCP: fits the card's receive buffers.
const GUEST_MTU: &str = "1500";
/// How long passt may take to set up before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// With no forwarded port there is nothing to watch for: give passt this
/// long to fail on its configuration (it does so in milliseconds).
const START_GRACE: Duration = Duration::from_millis(150);
/// passt's last words kept for error messages.
const STDERR_TAIL: usize = 4096;
/// passt lines copied to our log per VM before going quiet.
const MAX_LOGGED_LINES: u32 = 64;

/// Why passt could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// No `passt` program on this host.
    #[error("passt is not installed; install the passt package (packaging/setup.sh does)")]
    NotInstalled,
    /// A forwarded host port is taken by another program.
    #[error("port {port} is already in use on this computer; pick another host port")]
    PortInUse {
        /// The host port.
        port: u16,
    },
    /// The socket pair between the VM and passt could not be made.
    #[error("cannot create the socket to passt")]
    Socket(#[source] io::Error),
    /// passt could not be run.
    #[error("cannot run passt")]
    Spawn(#[source] io::Error),
    /// passt stopped while starting; `message` is what it said.
    #[error("passt stopped while starting: {message}")]
    Exited {
        /// passt's own error output (or its exit status).
        message: String,
    },
    /// passt neither failed nor became ready in time.
    #[error("passt did not finish starting within {} seconds", START_TIMEOUT.as_secs())]
    Timeout,
}

/// A running passt serving one VM. Dropping it stops passt.
pub(crate) struct Passt {
    child: Child,
    label: String,
    log_thread: Option<JoinHandle<()>>,
}

impl Passt {
    /// Start passt for the VM called `label` (used in log lines) with the
    /// port forwards of `cfg`. Returns passt and the VM's end of the
    /// connection, ready for `NetDevice::new`.
    ///
    /// Returns once passt is up: its forwarded ports are listening on
    /// 127.0.0.1, so a port clash is an error here, not a silent failure
    /// later.
    pub(crate) fn start(
        cfg: &NetworkConfig,
        label: &str,
    ) -> Result<(Passt, UnixStream), PasstError> {
        // A port somebody listens on fails here with a plain message; passt
        // would say the same, less plainly.
        for f in &cfg.port_forwards {
            check_port_free(f.host_port)?;
        }
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
        let fd = theirs.as_raw_fd();
        let args = arguments(cfg, fd);
        let mut cmd = Command::new("passt");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls fcntl, which is async-signal-safe. The socket pair is
        // close-on-exec (so no other child spawned meanwhile inherits it);
        // this clears the flag on passt's end, in passt only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                PasstError::NotInstalled
            } else {
                PasstError::Spawn(e)
            }
        })?;
        // passt has its own copy now.
        drop(theirs);
        let tail = Arc::new(Mutex::new(String::new()));
        let log_thread = child
            .stderr
            .take()
            .and_then(|stderr| spawn_log_reader(label, stderr, tail.clone()));
        let mut passt = Passt {
            child,
            label: label.to_string(),
            log_thread,
        };
        log::info!(
            "{label}: started passt (pid {}): passt {}",
            passt.child.id(),
            args.join(" ")
        );
        passt.wait_ready(cfg, &tail)?;
        Ok((passt, ours))
    }

    /// The process id of passt.
    #[cfg(test)]
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until passt listens on every forwarded port (or, with none,
    /// for a short grace period), failing if it exits first.
    fn wait_ready(&mut self, cfg: &NetworkConfig, tail: &Mutex<String>) -> Result<(), PasstError> {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // The log thread ends with passt's stderr: its tail is
                    // complete once it is joined.
                    if let Some(t) = self.log_thread.take() {
                        let _ = t.join();
                    }
                    let said = lock(tail).trim().to_string();
                    return Err(exit_error(&said, status));
                }
                Ok(None) => {}
                Err(e) => return Err(PasstError::Spawn(e)),
            }
            let ready = if cfg.port_forwards.is_empty() {
                start.elapsed() >= START_GRACE
            } else {
                let listening = loopback_listeners();
                cfg.port_forwards
                    .iter()
                    .all(|f| listening.contains(&f.host_port))
            };
            if ready {
                return Ok(());
            }
            if start.elapsed() >= START_TIMEOUT {
                return Err(PasstError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        // passt keeps no state worth a clean exit (no PID or socket file):
        // SIGKILL is certain, even if it stopped reading signals.
        if let Err(e) = self.child.kill() {
            if e.kind() != io::ErrorKind::InvalidInput {
                log::warn!("{}: cannot stop passt: {e}", self.label);
            }
        }
        let _ = self.child.wait();
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}

/// passt's arguments for `cfg`, with its end of the socket pair at `fd`.
fn arguments(cfg: &NetworkConfig, fd: i32) -> Vec<String> {
    let mut args: Vec<String> = vec![
        // Stay our child, so Drop can stop and reap it.
        "--foreground".into(),
        "--quiet".into(),
        "--fd".into(),
        fd.to_string(),
        "--mtu".into(),
        GUEST_MTU.into(),
        // Without this, passt also forwards UDP on each forwarded TCP port.
        "-u".into(),
        "none".into(),
    ];
    if cfg.port_forwards.is_empty() {
        args.extend(["-t".into(), "none".into()]);
    }
    for f in &cfg.port_forwards {
        // One -t per port: passt then fails on the one it cannot bind
        // rather than skipping it.
        args.push("-t".into());
        args.push(format!("127.0.0.1/{}:{}", f.host_port, f.guest_port));
    }
    args
}

/// Err when something already listens on `port` on 127.0.0.1 (or on all
/// addresses, which includes it).
fn check_port_free(port: u16) -> Result<(), PasstError> {
    // Rust sets SO_REUSEADDR, so a port only in TIME_WAIT binds; a
    // listening socket on it does not. The probe is closed before passt
    // binds (it never accepted, so it leaves nothing behind).
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(PasstError::PortInUse { port }),
        // Anything else (e.g. a privileged port without the right): let
        // passt try and report.
        Err(_) => Ok(()),
    }
}

/// Ports with a listening TCP socket on 127.0.0.1 (from /proc/net/tcp).
fn loopback_listeners() -> Vec<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            // 0A is TCP_LISTEN; 0100007F is 127.0.0.1 in host byte order.
            let (addr, port) = local.split_once(':')?;
            (state == "0A" && addr == "0100007F")
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// The error for passt exiting while starting, from what it said.
fn exit_error(said: &str, status: std::process::ExitStatus) -> PasstError {
    // "Failed to bind any port for '-t 127.0.0.1/8080:80', exiting"
    if let Some(rest) = said
        .split("Failed to bind any port for '-t 127.0.0.1/")
        .nth(1)
    {
        let port = rest.split(':').next().and_then(|p| p.parse().ok());
        if let Some(port) = port {
            return PasstError::PortInUse { port };
        }
    }
    let message = if said.is_empty() {
        format!("it exited ({status}) without saying why")
    } else {
        said.to_string()
    };
    PasstError::Exited { message }
}

/// Copy passt's stderr to our log and keep its tail for error messages.
fn spawn_log_reader(
    label: &str,
    stderr: std::process::ChildStderr,
    tail: Arc<Mutex<String>>,
) -> Option<JoinHandle<()>> {
    let label = label.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("passt-log-{label}"))
        .spawn(move || {
            let mut logged = 0u32;
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                // Lines are bounded by passt's own logging (a few hundred
                // bytes); read_until stops at EOF when passt exits.
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim();
                // Without a system logger (containers, CI) every message
                // is followed by this complaint; it says nothing about us.
                if line.is_empty()
                    || (line.starts_with("Failed to send") && line.ends_with("to syslog"))
                {
                    continue;
                }
                if line.contains("Changing to nobody") {
                    // Its normal start as root; see the module docs.
                    log::debug!("{label}: passt: {line}");
                    continue;
                }
                if logged < MAX_LOGGED_LINES {
                    logged += 1;
                    log::warn!("{label}: passt: {line}");
                }
                let mut t = lock(&tail);
                t.push_str(line);
                t.push('\n');
                if t.len() > STDERR_TAIL {
                    let mut cut = t.len() - STDERR_TAIL;
                    while !t.is_char_boundary(cut) {
                        cut += 1;
                    }
                    t.drain(..cut);
                }
            }
        });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            // The pipe is closed with the thread's closure: passt's messages
            // are lost (and a write may end it with SIGPIPE: a rare start
            // failure on a host out of threads).
            log::warn!("cannot start the thread reading passt's messages: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real passt, spoken to as a guest would: hand-built frames over the
    //! socket pair. Loopback only; ports picked by binding port 0.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hangar_api::config::PortForward;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn start(cfg: &NetworkConfig) -> (Passt, UnixStream) {
        match Passt::start(cfg, "test-vm") {
            Ok(v) => v,
            Err(PasstError::NotInstalled) => {
                panic!("passt is not installed: run packaging/setup.sh first")
            }
            Err(e) => panic!("passt did not start: {e}"),
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn send(s: &mut UnixStream, frame: &[u8]) {
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        s.write_all(&out).unwrap();
    }

    /// The next frame passt sends for which `want` is true (others, e.g.
    /// IPv6 router advertisements, are skipped), within 5 seconds.
    fn recv_matching(s: &mut UnixStream, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "passt sent no matching frame in time");
            s.set_read_timeout(Some(left)).unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let len = u32::from_be_bytes(len) as usize;
            assert!((14..=65535).contains(&len), "bad frame length {len}");
            let mut frame = vec![0u8; len];
            s.read_exact(&mut frame).unwrap();
            if want(&frame) {
                return frame;
            }
        }
    }

    fn checksum(data: &[u8], initial: u32) -> u16 {
        let mut sum = initial;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
        ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(payload);
        ip
    }

    fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn dhcp_discover() -> Vec<u8> {
        let mut bootp = vec![0u8; 236];
        bootp[0] = 1; // BOOTREQUEST
        bootp[1] = 1; // Ethernet
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&0x4861_6e67u32.to_be_bytes());
        bootp[10] = 0x80; // broadcast reply
        bootp[28..34].copy_from_slice(&GUEST_MAC);
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 55, 4, 1, 3, 6, 26, 255]);
        let mut udp = vec![0, 68, 0, 67, 0, 0, 0, 0];
        udp[4..6].copy_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&bootp);
        let ip = ipv4(17, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &udp);
        ethernet([0xff; 6], 0x0800, &ip)
    }

    /// DHCP options of a reply frame (Ethernet, IPv4, UDP, BOOTP).
    fn dhcp_options(frame: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let bootp = &ip[ihl + 8..];
        assert_eq!(&bootp[236..240], &[99, 130, 83, 99], "no DHCP magic cookie");
        let mut opts = Vec::new();
        let mut o = &bootp[240..];
        while let [code, rest @ ..] = o {
            match code {
                255 => break,
                0 => o = rest,
                _ => {
                    let n = usize::from(rest[0]);
                    opts.push((*code, rest[1..1 + n].to_vec()));
                    o = &rest[1 + n..];
                }
            }
        }
        opts
    }

    fn is_dhcp_reply(f: &[u8]) -> bool {
        f.len() > 14 + 20 + 8 + 240
            && f[12..14] == [0x08, 0x00]
            && f[14 + 9] == 17
            && f[14 + 20..14 + 22] == [0, 67]
    }

    struct Lease {
        passt_mac: [u8; 6],
        address: Ipv4Addr,
        gateway: Ipv4Addr,
        options: Vec<(u8, Vec<u8>)>,
    }

    fn dhcp(s: &mut UnixStream) -> Lease {
        send(s, &dhcp_discover());
        let offer = recv_matching(s, is_dhcp_reply);
        let bootp = &offer[14 + 20 + 8..];
        let options = dhcp_options(&offer);
        let opt = |c: u8| {
            options
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.clone())
        };
        let router = opt(3).expect("the offer names no router");
        Lease {
            passt_mac: offer[6..12].try_into().unwrap(),
            address: Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]),
            gateway: Ipv4Addr::new(router[0], router[1], router[2], router[3]),
            options,
        }
    }

    #[test]
    fn dhcp_discover_gets_an_offer() {
        let (_passt, mut s) = start(&NetworkConfig::default());
        let lease = dhcp(&mut s);
        let opt = |c: u8| {
            lease
                .options
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(opt(53), Some(vec![2]), "not a DHCPOFFER");
        assert!(!lease.address.is_unspecified());
        assert!(!lease.gateway.is_unspecified());
        // The MTU that fits the card's receive buffers.
        assert_eq!(opt(26), Some(1500u16.to_be_bytes().to_vec()));
        assert!(
            opt(6).is_some_and(|d| !d.is_empty() && d.len() % 4 == 0),
            "no DNS server"
        );
    }

    #[test]
    fn arp_for_the_gateway_is_answered() {
        let (_passt, mut s) = start(&NetworkConfig::default());
        let lease = dhcp(&mut s);
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&GUEST_MAC);
        arp.extend_from_slice(&lease.address.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&lease.gateway.octets());
        send(&mut s, &ethernet([0xff; 6], 0x0806, &arp));
        let reply = recv_matching(&mut s, |f| f[12..14] == [0x08, 0x06]);
        let a = &reply[14..];
        assert_eq!(&a[6..8], &[0, 2], "not an ARP reply");
        assert_eq!(
            &a[14..18],
            &lease.gateway.octets(),
            "reply is not for the gateway"
        );
        assert_eq!(&a[18..24], &GUEST_MAC);
        assert_eq!(&reply[0..6], &GUEST_MAC);
    }

    #[test]
    fn forwarded_port_listens_on_loopback_only() {
        let host_port = free_port();
        let cfg = NetworkConfig {
            port_forwards: vec![PortForward {
                host_port,
                guest_port: 80,
            }],
        };
        let (passt, _s) = start(&cfg);
        assert!(loopback_listeners().contains(&host_port));
        TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        // Not on the host's other addresses: no listener on 0.0.0.0 or ::.
        let port_hex = format!(":{host_port:04X} ");
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            let wildcard = text.lines().any(|l| {
                let local = l.split_whitespace().nth(1).unwrap_or("");
                format!("{local} ").ends_with(&port_hex)
                    && local.trim_start_matches('0').starts_with(':')
            });
            assert!(!wildcard, "port {host_port} is open beyond loopback");
        }
        let pid = passt.pid();
        drop(passt);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "passt still runs after drop"
        );
        // The port is free again.
        TcpListener::bind(("127.0.0.1", host_port)).unwrap();
    }

    #[test]
    fn port_clash_is_reported_at_start() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let cfg = NetworkConfig {
            port_forwards: vec![PortForward {
                host_port: port,
                guest_port: 22,
            }],
        };
        match Passt::start(&cfg, "test-vm") {
            Err(PasstError::PortInUse { port: p }) => assert_eq!(p, port),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("passt started on a port in use"),
        }
        let msg = PasstError::PortInUse { port }.to_string();
        assert!(msg.contains(&format!("port {port} is already in use")));
    }

    #[test]
    fn passt_clash_message_maps_to_port_in_use() {
        // What passt itself prints when it loses the race for a port.
        let said = "Failed to bind any port for '-t 127.0.0.1/8080:80', exiting";
        let status = Command::new("false").status().unwrap();
        assert!(matches!(
            exit_error(said, status),
            PasstError::PortInUse { port: 8080 }
        ));
        assert!(matches!(exit_error("", status), PasstError::Exited { .. }));
    }

    #[test]
    fn command_line() {
        let cfg = NetworkConfig {
            port_forwards: vec![
                PortForward {
                    host_port: 8080,
                    guest_port: 80,
                },
                PortForward {
                    host_port: 2222,
                    guest_port: 22,
                },
            ],
        };
        assert_eq!(
            arguments(&cfg, 7).join(" "),
            "--foreground --quiet --fd 7 --mtu 1500 -u none \
             -t 127.0.0.1/8080:80 -t 127.0.0.1/2222:22"
        );
        assert_eq!(
            arguments(&NetworkConfig::default(), 3).join(" "),
            "--foreground --quiet --fd 3 --mtu 1500 -u none -t none"
        );
    }

    /// A guest connecting to GATEWAY:PORT reaches the host's 127.0.0.1:PORT.
    #[test]
    fn gateway_maps_to_host_loopback() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        server.set_nonblocking(true).unwrap();
        let (_passt, mut s) = start(&NetworkConfig::default());
        let lease = dhcp(&mut s);
        // A TCP SYN from the guest's address to the gateway.
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&port.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&lease.address.octets());
        pseudo.extend_from_slice(&lease.gateway.octets());
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&tcp);
        let c = checksum(&pseudo, 0);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let ip = ipv4(6, lease.address, lease.gateway, &tcp);
        send(&mut s, &ethernet(lease.passt_mac, 0x0800, &ip));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match server.accept() {
                Ok((_conn, peer)) => {
                    assert!(peer.ip().is_loopback());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection reached the host");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        // And the guest gets the SYN-ACK from the gateway.
        let synack = recv_matching(&mut s, |f| {
            f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[14 + 9] == 6
        });
        assert_eq!(&synack[14 + 12..14 + 16], &lease.gateway.octets());
        assert_eq!(synack[14 + 20 + 13] & 0x12, 0x12, "not a SYN-ACK");
    }
}
