//! Library facts in words for people, shared by the GUI's log and the CLI.

use crate::config::{NetworkConfig, PortForward};

/// Bytes in words: `0 B`, `512 B`, `196 KiB`, `12.5 MiB`, `8.0 GiB`, `2.0 TiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if unit == "KiB" {
                format!("{} KiB", bytes.div_ceil(1024))
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// `127.0.0.1:2222 → guest:22`.
pub fn forward_text(f: &PortForward) -> String {
    format!("127.0.0.1:{} → guest:{}", f.host_port, f.guest_port)
}

/// A machine's network in a few words: `off`, `user-mode`, or user-mode
/// and its forwards.
pub fn network_text(network: Option<&NetworkConfig>) -> String {
    match network {
        None => "off".into(),
        Some(n) if n.port_forwards.is_empty() => "user-mode (no forwarded ports)".into(),
        Some(n) => format!(
            "user-mode, {}",
            n.port_forwards
                .iter()
                .map(forward_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_words() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(200 * 1024 - 5), "200 KiB");
        assert_eq!(format_size(3 << 20), "3.0 MiB");
        assert_eq!(format_size(12 * (1 << 20) + (1 << 19)), "12.5 MiB");
        assert_eq!(format_size(8 << 30), "8.0 GiB");
        assert_eq!(format_size(2 << 40), "2.0 TiB");
    }

    #[test]
    fn networks_in_words() {
        assert_eq!(network_text(None), "off");
        let mut net = NetworkConfig {
            port_forwards: Vec::new(),
        };
        assert_eq!(network_text(Some(&net)), "user-mode (no forwarded ports)");
        net.port_forwards.push(PortForward {
            host_port: 2222,
            guest_port: 22,
        });
        assert_eq!(
            network_text(Some(&net)),
            "user-mode, 127.0.0.1:2222 → guest:22"
        );
    }
}
