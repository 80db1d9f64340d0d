//! A VM's screen as the engine hands it to the app: one shared frame per
//! VM (XRGB pixels, row after row) that the VM's control thread updates
//! from the guest's framebuffer, only where KVM's dirty log says the guest
//! wrote, and the rectangles that changed since the app last looked.
//!
//! The app gets the handle once (the engine's `display` call) and, on each
//! [`crate::VmEvent::DisplayUpdated`], reads the changes with
//! [`Display::take_changes`]; nothing is allocated per frame on either side
//! of the lock (the rectangles' vector keeps its capacity).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Page size of KVM's dirty log.
const PAGE: usize = 4096;
/// Most rectangles kept between two looks; more collapse into one that
/// covers them all (the app then redraws a band instead of many strips).
const MAX_RECTS: usize = 64;

/// A changed part of the screen, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirtyRect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl DirtyRect {
    /// The smallest rectangle holding both.
    pub fn union(&self, other: &DirtyRect) -> DirtyRect {
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let right = (self.x + self.width).max(other.x + other.width);
        let bottom = (self.y + self.height).max(other.y + other.height);
        DirtyRect {
            x,
            y,
            width: right - x,
            height: bottom - y,
        }
    }
}

/// Errors of [`Display::save_png`].
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The file could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("cannot encode {path} as PNG: {message}")]
    Encode {
        /// The file.
        path: std::path::PathBuf,
        /// The encoder's reason.
        message: String,
    },
}

/// The frame and its bookkeeping, behind the lock.
#[derive(Debug)]
struct Screen {
    width: u32,
    height: u32,
    /// `0x00RRGGBB` per pixel, `width * height` of them.
    pixels: Vec<u32>,
    /// Changed since the last [`Display::take_changes`].
    dirty: Vec<DirtyRect>,
    /// Updates so far (each one with at least one change).
    generation: u64,
    /// One row of guest bytes, reused for every copy.
    row: Vec<u8>,
}

/// What [`Display::take_changes`] shows the caller: the whole frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// `0x00RRGGBB` per pixel, row after row.
    pub pixels: &'a [u32],
    /// Updates so far.
    pub generation: u64,
}

/// A VM's screen, shared between its control thread and the app.
#[derive(Debug, Clone)]
pub struct Display {
    screen: Arc<Mutex<Screen>>,
}

impl Display {
    /// A black screen of `width` × `height` (the VMM makes one per VM
    /// with a screen).
    pub fn new(width: u32, height: u32) -> Self {
        let n = width as usize * height as usize;
        Self {
            screen: Arc::new(Mutex::new(Screen {
                width,
                height,
                pixels: vec![0; n],
                dirty: Vec::with_capacity(MAX_RECTS),
                generation: 0,
                row: vec![0; width as usize * 4],
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Screen> {
        // A panic while holding the lock leaves plain pixels: still usable.
        self.screen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its size in pixels.
    pub fn size(&self) -> (u32, u32) {
        let s = self.lock();
        (s.width, s.height)
    }

    /// Updates so far; unchanged means nothing to draw.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Calls `f` with the frame and what changed since the last call (empty
    /// when nothing did), then forgets those changes.
    pub fn take_changes<R>(&self, f: impl FnOnce(Frame<'_>, &[DirtyRect]) -> R) -> R {
        let mut s = self.lock();
        let frame = Frame {
            width: s.width,
            height: s.height,
            pixels: &s.pixels,
            generation: s.generation,
        };
        let r = f(frame, &s.dirty);
        s.dirty.clear();
        r
    }

    /// A copy of one pixel (tests, screenshots of a point).
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        let s = self.lock();
        (x < s.width && y < s.height).then(|| s.pixels[(y * s.width + x) as usize])
    }

    /// Writes the current frame to `path` as an RGB PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), DisplayError> {
        let (width, height, rgb) = {
            let s = self.lock();
            let mut rgb = Vec::with_capacity(s.pixels.len() * 3);
            for p in &s.pixels {
                rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
            }
            (s.width, s.height, rgb)
        };
        let io = |source| DisplayError::Io {
            path: path.to_path_buf(),
            source,
        };
        let encode = |e: png::EncodingError| DisplayError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Written beside, then renamed: a failed save leaves no half file.
        let tmp = path.with_extension("png.part");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let result = enc
            .write_header()
            .and_then(|mut w| w.write_image_data(&rgb).and_then(|()| w.finish()))
            .map_err(encode);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Copies the rows that `pages` (KVM's dirty bitmap of the guest
    /// framebuffer, one bit per 4 KiB page) touch, reading the framebuffer
    /// (`stride` bytes a row, little-endian XRGB) through `read(offset,
    /// buf)`, and records what really changed: per band of dirty rows, the
    /// rectangle around the pixels whose value differs (a page can be
    /// written with what it held, and a page holds whole rows but the guest
    /// may have drawn only a few columns). Returns whether anything changed.
    /// Allocates nothing. The VMM's framebuffer calls it.
    pub fn update_from(
        &self,
        read: &dyn Fn(usize, &mut [u8]),
        stride: usize,
        pages: &[u64],
    ) -> bool {
        let mut guard = self.lock();
        let s = &mut *guard;
        let (width, height) = (s.width as usize, s.height as usize);
        let mut changed = false;
        for_each_dirty_band(pages, stride, height, |top, bottom| {
            // Columns [left, right) and rows [first, last] that changed.
            let (mut left, mut right) = (width, 0);
            let (mut first, mut last) = (usize::MAX, 0);
            for row in top..bottom {
                read(row * stride, &mut s.row);
                let dst = &mut s.pixels[row * width..(row + 1) * width];
                for (x, (d, px)) in dst.iter_mut().zip(s.row.chunks_exact(4)).enumerate() {
                    let p = u32::from_le_bytes([px[0], px[1], px[2], px[3]]) & 0x00ff_ffff;
                    if *d != p {
                        *d = p;
                        left = left.min(x);
                        right = right.max(x + 1);
                        first = first.min(row);
                        last = row;
                    }
                }
            }
            if first == usize::MAX {
                return;
            }
            changed = true;
            let rect = DirtyRect {
                x: left as u32,
                y: first as u32,
                width: (right - left) as u32,
                height: (last + 1 - first) as u32,
            };
            if s.dirty.len() < MAX_RECTS {
                s.dirty.push(rect);
            } else if let Some(l) = s.dirty.last_mut() {
                *l = l.union(&rect);
            }
        });
        if changed {
            s.generation += 1;
        }
        changed
    }
}

/// Calls `f(top, bottom)` for each band of rows `[top, bottom)` that the
/// dirty pages of a framebuffer of `height` rows, `stride` bytes each,
/// overlap, adjacent bands merged, top to bottom. A row is dirty if any of
/// its bytes lies in a dirty page.
fn for_each_dirty_band(
    pages: &[u64],
    stride: usize,
    height: usize,
    mut f: impl FnMut(usize, usize),
) {
    if stride == 0 {
        return;
    }
    let total = stride * height;
    let mut band: Option<(usize, usize)> = None;
    for (word_index, word) in pages.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let start = (word_index * 64 + bit) * PAGE;
            if start >= total {
                continue;
            }
            let end = (start + PAGE).min(total);
            let (top, bottom) = (start / stride, end.div_ceil(stride).min(height));
            band = match band {
                Some((t, b)) if top <= b => Some((t, b.max(bottom))),
                Some((t, b)) => {
                    f(t, b);
                    Some((top, bottom))
                }
                None => Some((top, bottom)),
            };
        }
    }
    if let Some((t, b)) = band {
        f(t, b);
    }
}

/// The bands of [`for_each_dirty_band`], collected (tests).
#[cfg(test)]
fn dirty_row_bands(pages: &[u64], stride: usize, height: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for_each_dirty_band(pages, stride, height, |t, b| v.push((t, b)));
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reader(guest: &[u8]) -> impl Fn(usize, &mut [u8]) + '_ {
        move |off, buf| buf.copy_from_slice(&guest[off..off + buf.len()])
    }

    #[test]
    fn dirty_pages_become_row_bands() {
        // 320 pixels × 4 bytes = 1280 bytes a row; a page spans 3.2 rows.
        let stride = 1280;
        let mut pages = vec![0u64; 4];
        pages[0] = 1; // bytes 0..4096: rows 0..4 (row 3 partly)
        assert_eq!(dirty_row_bands(&pages, stride, 200), vec![(0, 4)]);
        pages[0] = 0b11; // two adjacent pages merge
        assert_eq!(dirty_row_bands(&pages, stride, 200), vec![(0, 7)]);
        pages[0] = 0b101; // a gap stays a gap (page 2: bytes 8192..12288)
        assert_eq!(dirty_row_bands(&pages, stride, 200), vec![(0, 4), (6, 10)]);
        // Pages past the end of the frame are ignored.
        let mut far = vec![0u64; 4];
        far[3] = 1 << 63;
        assert!(dirty_row_bands(&far, stride, 200).is_empty());
        assert!(dirty_row_bands(&[0, 0], stride, 200).is_empty());
    }

    #[test]
    fn updates_copy_only_dirty_rows_and_report_them() {
        let d = Display::new(320, 200);
        let stride = 1280;
        let mut guest = vec![0u8; stride * 200];
        // A red pixel at (5, 1) and a green one at (0, 150), both written.
        guest[stride + 5 * 4..stride + 5 * 4 + 4].copy_from_slice(&[0, 0, 0xff, 0xee]);
        guest[150 * stride..150 * stride + 4].copy_from_slice(&[0, 0xff, 0, 0]);
        let mut pages = vec![0u64; 1];
        pages[0] = 1; // only the first page is reported dirty
        assert!(d.update_from(&reader(&guest), stride, &pages));
        assert_eq!(d.pixel(5, 1), Some(0x00ff_0000), "X byte masked off");
        assert_eq!(
            d.pixel(0, 150),
            Some(0),
            "row 150 was not dirty: not copied"
        );
        let rects = d.take_changes(|f, r| {
            assert_eq!(f.generation, 1);
            r.to_vec()
        });
        // Page 0 was dirty (rows 0-3), but only one pixel in it changed.
        assert_eq!(
            rects,
            vec![DirtyRect {
                x: 5,
                y: 1,
                width: 1,
                height: 1
            }]
        );
        assert!(
            d.take_changes(|_, r| r.is_empty()),
            "changes are taken once"
        );
        assert!(
            !d.update_from(&reader(&guest), stride, &[0]),
            "nothing dirty, no update"
        );
        // A page written with what it held already: no change either.
        assert!(!d.update_from(&reader(&guest), stride, &pages));
        assert_eq!(d.generation(), 1);
    }

    #[test]
    fn many_changes_collapse_into_a_bounded_list() {
        let d = Display::new(320, 200);
        let stride = 1280;
        let mut guest = vec![0u8; stride * 200];
        // Every other page dirty and changed: 32 bands per update, three
        // updates with new contents each time.
        let pages = vec![0x5555_5555_5555_5555u64];
        for round in 1..=3u8 {
            guest.iter_mut().for_each(|b| *b = round);
            assert!(d.update_from(&reader(&guest), stride, &pages));
        }
        let n = d.take_changes(|_, r| r.len());
        assert!(n <= MAX_RECTS, "{n} rectangles");
    }

    #[test]
    fn png_round_trip() {
        let d = Display::new(320, 200);
        let stride = 1280;
        let mut guest = vec![0u8; stride * 200];
        guest[..4].copy_from_slice(&[0x30, 0x20, 0x10, 0]);
        d.update_from(&reader(&guest), stride, &[1]);
        let dir = hangar_testkit::TempDir::new("png");
        let path = dir.join("shot.png");
        d.save_png(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (320, 200));
        assert_eq!(&buf[..3], &[0x10, 0x20, 0x30], "RGB from XRGB");
        assert!(!dir.join("shot.png.part").exists());
        let bad = d.save_png(Path::new("/nonexistent-dir/x.png")).unwrap_err();
        assert!(bad.to_string().contains("/nonexistent-dir/x.png"), "{bad}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
