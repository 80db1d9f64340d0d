//! Frame-time figures, on only with `HANGAR_FRAME_STATS=1` (see
//! [`crate::gui::automation`], which wraps the app when it is set).
//!
//! For every frame it measures, on the UI thread:
//! - `cpu`: thread CPU time spent in `App::ui` (draining engine events,
//!   feeding terminals, laying out every panel);
//! - `wall`: wall time of the same call;
//! - `frame_cpu`: thread CPU time from the start of one `App::ui` to the
//!   start of the next, i.e. the UI plus what eframe does after it on this
//!   thread (tessellation, GL calls, buffer swap, window events). llvmpipe's
//!   own rasteriser threads are not counted.
//!
//! Every [`WINDOW`] frames it prints one line to stderr:
//! `hangar: frames: n=300 cpu_median_ms=… cpu_p95_ms=… wall_median_ms=…
//! fps=… frame_cpu_median_ms=…`, where `fps` is frames per second of wall
//! time over those frames.

use std::time::Instant;

/// Frames per printed line.
pub const WINDOW: usize = 300;

/// Thread CPU time of the calling thread, in milliseconds.
pub fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass, which lives on
    // this stack frame for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// When a frame began.
#[derive(Debug, Clone, Copy)]
pub struct FrameStart {
    cpu_ms: f64,
    wall: Instant,
}

/// Per-frame samples of the current window.
#[derive(Debug)]
pub struct FrameStats {
    cpu: Vec<f64>,
    wall: Vec<f64>,
    frame_cpu: Vec<f64>,
    /// CPU time at the start of the previous frame.
    prev_start_cpu: Option<f64>,
    /// When the current window's first frame began.
    window_start: Option<Instant>,
}

impl Default for FrameStats {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameStats {
    /// Nothing measured yet.
    pub fn new() -> Self {
        Self {
            cpu: Vec::with_capacity(WINDOW),
            wall: Vec::with_capacity(WINDOW),
            frame_cpu: Vec::with_capacity(WINDOW),
            prev_start_cpu: None,
            window_start: None,
        }
    }

    /// Call first thing in `App::ui`.
    pub fn begin(&mut self) -> FrameStart {
        let start = FrameStart {
            cpu_ms: thread_cpu_ms(),
            wall: Instant::now(),
        };
        if let Some(prev) = self.prev_start_cpu {
            self.frame_cpu.push(start.cpu_ms - prev);
        }
        self.prev_start_cpu = Some(start.cpu_ms);
        self.window_start.get_or_insert(start.wall);
        start
    }

    /// Call last thing in `App::ui`; prints a line every [`WINDOW`] frames.
    pub fn end(&mut self, start: FrameStart) {
        self.cpu.push(thread_cpu_ms() - start.cpu_ms);
        self.wall.push(start.wall.elapsed().as_secs_f64() * 1e3);
        if self.cpu.len() >= WINDOW {
            if let Some(line) = self.report() {
                eprintln!("{line}");
            }
        }
    }

    /// The summary line of the frames so far, and start a new window.
    pub fn report(&mut self) -> Option<String> {
        let n = self.cpu.len();
        let since = self.window_start.take()?;
        if n == 0 {
            return None;
        }
        let secs = since.elapsed().as_secs_f64();
        let line = format!(
            "hangar: frames: n={n} cpu_median_ms={:.2} cpu_p95_ms={:.2} wall_median_ms={:.2} fps={:.1} frame_cpu_median_ms={:.2}",
            percentile(&mut self.cpu, 0.5),
            percentile(&mut self.cpu, 0.95),
            percentile(&mut self.wall, 0.5),
            if secs > 0.0 { n as f64 / secs } else { 0.0 },
            percentile(&mut self.frame_cpu, 0.5),
        );
        self.cpu.clear();
        self.wall.clear();
        self.frame_cpu.clear();
        Some(line)
    }
}

/// The `q` quantile (nearest rank) of `v`; 0 when empty. Sorts `v`.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.95), 95.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
        assert_eq!(percentile(&mut [3.0], 0.95), 3.0);
    }

    #[test]
    fn test_a_window_reports_and_starts_over() {
        let mut s = FrameStats::new();
        for _ in 0..3 {
            let f = s.begin();
            s.end(f);
        }
        let line = s.report().unwrap();
        assert!(
            line.starts_with("hangar: frames: n=3 cpu_median_ms="),
            "{line}"
        );
        assert!(s.report().is_none());
        assert!(thread_cpu_ms() > 0.0);
    }
}
