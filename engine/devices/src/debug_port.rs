//! Hangar's debug port: how a guest reports boot progress and powers off
//! with an exit status, without ACPI.
//!
//! Port [`DEBUG_PORT_BASE`]: a byte written there is a boot-progress marker.
//! Port `DEBUG_PORT_BASE + 1`: a byte written there asks the VM to stop with
//! that exit status. Test guests use it to end a run with a verdict.

use serde::{Deserialize, Serialize};

use super::{BusDevice, GuestRequest, Persist};

/// The marker port; the exit port is the next one.
pub const DEBUG_PORT_BASE: u16 = 0x402;
/// Marker port and exit port.
pub const DEBUG_PORT_LEN: u64 = 2;

/// Offset of the boot-progress marker port.
const MARKER_OFFSET: u64 = 0;
/// Offset of the exit port.
const EXIT_OFFSET: u64 = 1;

/// What the debug port remembers, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DebugPortState {
    /// Markers written so far.
    pub markers_seen: u64,
    /// The last marker written, if any.
    pub last_marker: Option<u8>,
}

/// Why a debug port state cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DebugPortError {
    /// A marker count without a last marker, or a last marker with no count.
    #[error("{markers_seen} markers seen but last marker {last_marker:?}")]
    MarkerCount {
        /// The count in the state.
        markers_seen: u64,
        /// The last marker in the state.
        last_marker: Option<u8>,
    },
}

/// The debug port device. It turns one-byte writes into [`GuestRequest`]s;
/// any other access is ignored and reads return 0.
#[derive(Debug, Default)]
pub struct DebugPort {
    state: DebugPortState,
}

impl DebugPort {
    /// A port that has seen no markers.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Persist for DebugPort {
    type State = DebugPortState;
    type Args = ();
    type Error = DebugPortError;

    /// Markers seen so far.
    fn save(&self) -> DebugPortState {
        self.state.clone()
    }

    fn restore((): (), state: &DebugPortState) -> Result<Self, DebugPortError> {
        // Every marker counts, so a count and a last marker come together.
        if (state.markers_seen == 0) != state.last_marker.is_none() {
            return Err(DebugPortError::MarkerCount {
                markers_seen: state.markers_seen,
                last_marker: state.last_marker,
            });
        }
        Ok(Self {
            state: state.clone(),
        })
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        // Only `out dx, al` counts: a wider write is more likely a stray
        // access than a deliberate report.
        let &[value] = data else {
            return None;
        };
        match offset {
            MARKER_OFFSET => {
                self.state.markers_seen = self.state.markers_seen.saturating_add(1);
                self.state.last_marker = Some(value);
                Some(GuestRequest::Marker(value))
            }
            EXIT_OFFSET => Some(GuestRequest::Exit(value)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_marker_write_returns_marker_request() {
        let mut port = DebugPort::new();
        assert_eq!(port.write(0, &[0x2a]), Some(GuestRequest::Marker(0x2a)));
        assert_eq!(port.save().markers_seen, 1);
        assert_eq!(port.save().last_marker, Some(0x2a));
    }

    #[test]
    fn test_exit_write_returns_exit_request_with_status() {
        let mut port = DebugPort::new();
        assert_eq!(port.write(1, &[0]), Some(GuestRequest::Exit(0)));
        assert_eq!(port.write(1, &[0xff]), Some(GuestRequest::Exit(0xff)));
        assert_eq!(port.save().markers_seen, 0);
    }

    #[test]
    fn test_wide_or_empty_writes_are_ignored() {
        let mut port = DebugPort::new();
        assert_eq!(port.write(0, &[]), None);
        assert_eq!(port.write(0, &[1, 2]), None);
        assert_eq!(port.write(1, &[1, 2, 3, 4]), None);
        assert_eq!(port.save(), DebugPortState::default());
    }

    #[test]
    fn test_out_of_range_offset_is_ignored() {
        let mut port = DebugPort::new();
        assert_eq!(port.write(2, &[1]), None);
        assert_eq!(port.write(u64::MAX, &[1]), None);
    }

    #[test]
    fn test_reads_return_zero_for_any_size() {
        let mut port = DebugPort::new();
        for len in [0usize, 1, 2, 4] {
            let mut data = vec![0xaa; len];
            port.read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0));
            port.read(1, &mut data);
            assert!(data.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn test_constants_match_the_port_layout() {
        assert_eq!(DEBUG_PORT_BASE, 0x402);
        assert_eq!(DEBUG_PORT_LEN, 2);
    }

    #[test]
    fn test_state_round_trip_keeps_marker_count() {
        let mut port = DebugPort::new();
        for m in 1..=5 {
            port.write(0, &[m]);
        }
        let state = port.save();
        let json = serde_json::to_string(&state).unwrap();
        let parsed: DebugPortState = serde_json::from_str(&json).unwrap();
        let mut restored = DebugPort::restore((), &parsed).unwrap();
        assert_eq!(restored.save(), state);
        restored.write(0, &[9]);
        assert_eq!(restored.save().markers_seen, 6);
    }

    #[test]
    fn test_restore_refuses_a_count_without_a_marker() {
        for (markers_seen, last_marker) in [(0, Some(1)), (3, None)] {
            let state = DebugPortState {
                markers_seen,
                last_marker,
            };
            assert_eq!(
                DebugPort::restore((), &state).err(),
                Some(DebugPortError::MarkerCount {
                    markers_seen,
                    last_marker
                })
            );
        }
        assert!(DebugPort::restore((), &DebugPortState::default()).is_ok());
    }
}
