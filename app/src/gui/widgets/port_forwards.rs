//! A VM's network settings as a small form: user-mode networking on or
//! off and the host ports forwarded into the guest, one editable row each.
//! Shared by the wizard and the Overview tab; the engine's
//! [`NetworkConfig::validate`] decides which forwards are refused, so both
//! say exactly what the engine would.

use hangar_engine::{NetworkConfig, PortForward};

/// One forward as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardRow {
    /// Port on the host's 127.0.0.1.
    pub host: String,
    /// Port in the guest.
    pub guest: String,
}

/// The form's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkForm {
    /// User-mode networking (passt) on.
    pub enabled: bool,
    /// Forward rows; rows left empty are ignored.
    pub forwards: Vec<ForwardRow>,
}

impl NetworkForm {
    /// The form showing `network` as it is defined.
    pub fn from_config(network: Option<&NetworkConfig>) -> Self {
        Self {
            enabled: network.is_some(),
            forwards: network
                .map(|n| {
                    n.port_forwards
                        .iter()
                        .map(|f| ForwardRow {
                            host: f.host_port.to_string(),
                            guest: f.guest_port.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The network the fields describe (None: off), or what is wrong with
    /// them in words.
    pub fn config(&self) -> Result<Option<NetworkConfig>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let mut port_forwards = Vec::new();
        for (i, row) in self.forwards.iter().enumerate() {
            if row.host.trim().is_empty() && row.guest.trim().is_empty() {
                continue;
            }
            let n = i + 1;
            // 0 parses: the engine's check refuses it with its own words.
            let port = |text: &str, which: &str| {
                let t = text.trim();
                t.parse::<u16>().map_err(|_| {
                    format!(
                        "Port forward {n}: {which} port \"{t}\" is not a port number (1-65535)."
                    )
                })
            };
            port_forwards.push(PortForward {
                host_port: port(&row.host, "host")?,
                guest_port: port(&row.guest, "guest")?,
            });
        }
        let network = NetworkConfig { port_forwards };
        network.validate().map_err(|e| format!("{e}."))?;
        Ok(Some(network))
    }
}

pub use hangar_engine::library::{forward_text, network_text};

/// Draw the form: the on/off box, then (when on) a row per forward with
/// Remove, and Add port forward. Returns true if anything changed.
pub fn network_form_ui(ui: &mut egui::Ui, form: &mut NetworkForm) -> bool {
    let mut changed = ui
        .checkbox(&mut form.enabled, "Network (user-mode)")
        .on_hover_text(
            "The guest gets an address by DHCP and reaches what this host reaches; \
             no root and no bridge needed",
        )
        .changed();
    if !form.enabled {
        return changed;
    }
    ui.indent("port_forwards", |ui| {
        let mut remove = None;
        for (i, row) in form.forwards.iter_mut().enumerate() {
            let n = i + 1;
            ui.horizontal(|ui| {
                ui.weak("127.0.0.1:");
                changed |= ui
                    .add(
                        egui::TextEdit::singleline(&mut row.host)
                            .hint_text("host")
                            .desired_width(60.0),
                    )
                    .accessible_name(format!("Host port {n}"))
                    .changed();
                ui.label("→ guest:");
                changed |= ui
                    .add(
                        egui::TextEdit::singleline(&mut row.guest)
                            .hint_text("guest")
                            .desired_width(60.0),
                    )
                    .accessible_name(format!("Guest port {n}"))
                    .changed();
                if ui
                    .small_button("Remove")
                    .accessible_name(format!("Remove port forward {n}"))
                    .clicked()
                {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            form.forwards.remove(i);
            changed = true;
        }
        if ui
            .small_button("Add port forward")
            .on_hover_text("Forward a TCP port of this host's 127.0.0.1 into the guest")
            .clicked()
        {
            form.forwards.push(ForwardRow::default());
            changed = true;
        }
    });
    changed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(host: &str, guest: &str) -> ForwardRow {
        ForwardRow {
            host: host.into(),
            guest: guest.into(),
        }
    }

    #[test]
    fn test_form_round_trips_and_refuses_what_the_engine_refuses() {
        let mut f = NetworkForm {
            enabled: true,
            forwards: vec![row("2222", "22"), row("", "")],
        };
        let net = f.config().unwrap().unwrap();
        assert_eq!(
            net.port_forwards,
            [PortForward {
                host_port: 2222,
                guest_port: 22
            }]
        );
        assert_eq!(
            NetworkForm::from_config(Some(&net)).forwards,
            [row("2222", "22")]
        );
        f.forwards.push(row("2222", "80"));
        assert!(f.config().unwrap_err().contains("forwarded twice"));
        f.forwards = vec![row("0", "22")];
        assert!(f.config().unwrap_err().contains("port 0"));
        f.forwards = vec![row("http", "22")];
        assert!(f.config().unwrap_err().contains("not a port number"));
        f.enabled = false;
        assert_eq!(f.config(), Ok(None));
        assert_eq!(network_text(None), "off");
        assert_eq!(
            network_text(Some(&net)),
            "user-mode, 127.0.0.1:2222 → guest:22"
        );
    }
}
