//! Review pictures: a PNG montage of the axial slices that hold lesions, CT in the brain window
//! with the mask outlined and the lesions numbered as in the report (docs/OVERLAY.md).
//! Lives in the CLI so the embedded library never links an image crate.

use crate::font;
use ichseg::lesions::Lesion;
use ichseg::{Error, Result};
use ndarray::{Array3, ArrayView3};
use std::path::Path;

/// The standard brain window (level 40 HU, width 80 HU).
pub const WINDOW_LEVEL: f32 = 40.0;
pub const WINDOW_WIDTH: f32 = 80.0;
/// At most this many tiles; see `choose_slices`.
pub const MAX_TILES: usize = 12;
/// Largest tile side in pixels: bigger slices are shown at a coarser (still square) pixel.
pub const MAX_TILE_PX: usize = 256;
pub const GAP: usize = 4;
pub const COLUMNS: usize = 4;
pub const OUTLINE: [u8; 3] = [255, 48, 48];
pub const LABEL: [u8; 3] = [255, 230, 0];
pub const TEXT: [u8; 3] = [255, 255, 255];
pub const BACKGROUND: [u8; 3] = [16, 16, 16];
pub const NO_LESION_TEXT: &str = "NO HEMORRHAGE FOUND";

/// An RGB image, row-major.
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Rgb {
    fn new(width: usize, height: usize, fill: [u8; 3]) -> Self {
        Rgb { width, height, pixels: fill.iter().copied().cycle().take(width * height * 3).collect() }
    }
    #[cfg(test)]
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }
    /// Text with a one-pixel dark shadow so it reads on bright and dark CT alike.
    fn text(&mut self, s: &str, x: i64, y: i64, scale: usize, c: [u8; 3]) {
        font::draw_text(s, x + 1, y + 1, scale, |px, py| self.put(px, py, [0, 0, 0]));
        font::draw_text(s, x, y, scale, |px, py| self.put(px, py, c));
    }
}

/// How the voxel grid maps to the tile: which voxel axis runs across, whether it is flipped, the
/// pixel size, and the letters at the tile's left, right, top and bottom edges.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Voxel axis (0 = x/i, 1 = y/j) shown across the tile; the other runs down.
    pub across: usize,
    pub flip_across: bool,
    pub flip_down: bool,
    /// Millimetres per (square) pixel.
    pub pixel_mm: f64,
    pub width: usize,
    pub height: usize,
    /// Left, right, top, bottom.
    pub letters: [char; 4],
    /// False when the slice plane is not close to axial (letters are then the nearest axes').
    pub axial: bool,
}

/// The patient direction nearest a RAS+ vector.
fn letter(v: [f64; 3]) -> char {
    let k = (0..3).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs())).unwrap_or(0);
    let pos = v[k] >= 0.0;
    match (k, pos) {
        (0, true) => 'R',
        (0, false) => 'L',
        (1, true) => 'A',
        (1, false) => 'P',
        (_, true) => 'S',
        (_, false) => 'I',
    }
}

impl View {
    /// Radiological convention from the affine: world +x (RAS+: the patient's right) to the tile's
    /// left, world +y (anterior) to the top.
    pub fn new(shape: [usize; 3], spacing: [f64; 3], affine: &[[f64; 4]; 4]) -> Self {
        // Unit direction of voxel axis `a` in RAS+.
        let dir = |a: usize| {
            let v = [affine[0][a], affine[1][a], affine[2][a]];
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(f64::MIN_POSITIVE);
            [v[0] / n, v[1] / n, v[2] / n]
        };
        let (d0, d1, d2) = (dir(0), dir(1), dir(2));
        let across = if d0[0].abs() >= d1[0].abs() { 0 } else { 1 };
        let down = 1 - across;
        let da = if across == 0 { d0 } else { d1 };
        let dd = if down == 0 { d0 } else { d1 };
        let flip_across = da[0] > 0.0;
        let flip_down = dd[1] > 0.0;
        let right = if flip_across { da.map(|c| -c) } else { da };
        let downv = if flip_down { dd.map(|c| -c) } else { dd };
        let letters = [letter(right.map(|c| -c)), letter(right), letter(downv.map(|c| -c)), letter(downv)];
        // Axial when the slice normal is within ~25 degrees of the S-I axis.
        let axial = d2[2].abs() > 0.9;
        let (nx, ny) = (shape[2], shape[1]);
        let ext = [nx as f64 * spacing[0], ny as f64 * spacing[1]];
        let pixel_mm = spacing[0].min(spacing[1]).max(ext[0].max(ext[1]) / MAX_TILE_PX as f64);
        let (ea, ed) = (ext[across], ext[down]);
        let width = ((ea / pixel_mm).round() as usize).max(1);
        let height = ((ed / pixel_mm).round() as usize).max(1);
        View { across, flip_across, flip_down, pixel_mm, width, height, letters, axial }
    }

    /// The voxel (x, y) a tile pixel shows (nearest neighbour).
    pub fn voxel(&self, px: usize, py: usize, shape: [usize; 3], spacing: [f64; 3]) -> (usize, usize) {
        let n = [shape[2], shape[1]];
        let down = 1 - self.across;
        let pick = |p: usize, axis: usize, flip: bool| {
            let i = (((p as f64 + 0.5) * self.pixel_mm / spacing[axis]) as usize).min(n[axis] - 1);
            if flip {
                n[axis] - 1 - i
            } else {
                i
            }
        };
        let a = pick(px, self.across, self.flip_across);
        let d = pick(py, down, self.flip_down);
        if self.across == 0 {
            (a, d)
        } else {
            (d, a)
        }
    }
}

/// Up to `MAX_TILES` axial slices: each lesion's largest slice (most mask voxels inside its
/// bounding box), then slices spread evenly over the rest of the lesion-bearing slices.
pub fn choose_slices(mask: ArrayView3<u8>, lesions: &[Lesion]) -> Vec<usize> {
    let counts: Vec<usize> = mask.outer_iter().map(|s| s.iter().filter(|&&v| v != 0).count()).collect();
    let with: Vec<usize> = (0..counts.len()).filter(|&z| counts[z] > 0).collect();
    if with.len() <= MAX_TILES {
        return with;
    }
    let mut chosen: Vec<usize> = Vec::new();
    for l in lesions {
        let best = (l.first_slice..=l.last_slice).max_by_key(|&z| {
            let s = mask.index_axis(ndarray::Axis(0), z);
            let mut n = 0;
            for y in l.bbox_min[1]..=l.bbox_max[1] {
                for x in l.bbox_min[0]..=l.bbox_max[0] {
                    n += (s[[y, x]] != 0) as usize;
                }
            }
            n
        });
        if let Some(z) = best {
            if !chosen.contains(&z) && chosen.len() < MAX_TILES {
                chosen.push(z);
            }
        }
    }
    let free = MAX_TILES - chosen.len();
    let rest: Vec<usize> = with.iter().copied().filter(|z| !chosen.contains(z)).collect();
    for k in 0..free.min(rest.len()) {
        chosen.push(rest[k * rest.len() / free.min(rest.len())]);
    }
    chosen.sort_unstable();
    chosen
}

/// Draws one slice into `img` at (ox, oy): CT, outline, lesion numbers, letters, scale bar, z.
#[allow(clippy::too_many_arguments)]
fn draw_tile(
    img: &mut Rgb,
    origin: (usize, usize),
    ct: &Array3<f32>,
    mask: Option<&Array3<u8>>,
    heat: Option<&Array3<f32>>,
    z: usize,
    view: &View,
    spacing: [f64; 3],
    lesions: &[Lesion],
) {
    let shape = [ct.shape()[0], ct.shape()[1], ct.shape()[2]];
    let (ox, oy) = (origin.0 as i64, origin.1 as i64);
    let inside = |px: i64, py: i64| -> bool {
        if px < 0 || py < 0 || px as usize >= view.width || py as usize >= view.height {
            return false;
        }
        let (x, y) = view.voxel(px as usize, py as usize, shape, spacing);
        mask.is_some_and(|m| m[[z, y, x]] != 0)
    };
    let lo = WINDOW_LEVEL - WINDOW_WIDTH / 2.0;
    for py in 0..view.height {
        for px in 0..view.width {
            let (x, y) = view.voxel(px, py, shape, spacing);
            let g = (((ct[[z, y, x]] - lo) / WINDOW_WIDTH).clamp(0.0, 1.0) * 255.0).round() as u8;
            let mut c = [g, g, g];
            if let Some(h) = heat {
                // Blend the map's colour in proportion to its value, so a zero map leaves the CT.
                let v = h[[z, y, x]].clamp(0.0, 1.0);
                let r = ramp(v);
                let a = 0.65 * v;
                c = [0, 1, 2].map(|i| (c[i] as f32 * (1.0 - a) + r[i] as f32 * a).round() as u8);
            }
            let (p, q) = (px as i64, py as i64);
            // Outline: a mask pixel with a 4-neighbour outside the mask (or outside the tile).
            let edge =
                inside(p, q) && [(1, 0), (-1, 0), (0, 1), (0, -1)].iter().any(|&(dx, dy)| !inside(p + dx, q + dy));
            img.put(ox + p, oy + q, if edge { OUTLINE } else { c });
        }
    }
    // Lesion numbers just outside each lesion's box on this slice, in tile pixels.
    for l in lesions.iter().filter(|l| (l.first_slice..=l.last_slice).contains(&z)) {
        let corners = [(l.bbox_min[0], l.bbox_min[1]), (l.bbox_max[0], l.bbox_max[1])];
        let to_px = |x: usize, y: usize| {
            let v = [x as f64, y as f64];
            let a = if view.across == 0 { 0 } else { 1 };
            let n = [shape[2], shape[1]];
            let pos = |axis: usize, flip: bool| {
                let i = if flip { n[axis] as f64 - 1.0 - v[axis] } else { v[axis] };
                (i + 0.5) * spacing[axis] / view.pixel_mm
            };
            let pa = pos(a, view.flip_across);
            let pd = pos(1 - a, view.flip_down);
            (pa, pd)
        };
        let (p0, p1) = (to_px(corners[0].0, corners[0].1), to_px(corners[1].0, corners[1].1));
        let right = p0.0.max(p1.0) as i64 + 3;
        let top = p0.1.min(p1.1) as i64;
        let label = l.id.to_string();
        let w = font::text_width(&label, 2) as i64;
        let x = right.min(view.width as i64 - w - 1).max(0);
        let y = top.clamp(0, view.height as i64 - 15);
        img.text(&label, ox + x, oy + y, 2, LABEL);
    }
    // Orientation letters at the middle of each edge.
    let (w, h) = (view.width as i64, view.height as i64);
    // A '?' after each letter marks a slice plane far from axial: the letters name nearest axes.
    let mark = if view.axial { "" } else { "?" };
    let [l, r, t, b] = view.letters.map(|c| format!("{c}{mark}"));
    img.text(&l, ox + 3, oy + h / 2 - 7, 2, TEXT);
    img.text(&r, ox + w - 13, oy + h / 2 - 7, 2, TEXT);
    img.text(&t, ox + w / 2 - 5, oy + 3, 2, TEXT);
    img.text(&b, ox + w / 2 - 5, oy + h - 17, 2, TEXT);
    // Slice index, top-left.
    img.text(&format!("z={z}"), ox + 3, oy + 3, 1, TEXT);
    // Scale bar: the longest of 5, 2, 1 cm that fits in 40 % of the tile, bottom-right.
    let cm = [5usize, 2, 1].into_iter().find(|&c| (c as f64 * 10.0 / view.pixel_mm) <= 0.4 * w as f64).unwrap_or(1);
    let len = (cm as f64 * 10.0 / view.pixel_mm).round() as i64;
    let (bx, by) = (ox + w - len - 4, oy + h - 6);
    for dx in 0..len {
        for dy in 0..3 {
            img.put(bx + dx, by + dy, TEXT);
        }
    }
    let label = format!("{cm} cm");
    img.text(&label, bx + len - font::text_width(&label, 1) as i64, by - 10, 1, TEXT);
}

/// The montage for a CT volume and its mask: one tile per chosen slice, `COLUMNS` across, or
/// one middle slice under a "NO HEMORRHAGE FOUND" banner when the mask is empty.
pub fn render(
    ct: &Array3<f32>,
    mask: &Array3<u8>,
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    lesions: &[Lesion],
) -> Rgb {
    let shape = [ct.shape()[0], ct.shape()[1], ct.shape()[2]];
    let view = View::new(shape, spacing, affine);
    let slices = choose_slices(mask.view(), lesions);
    if slices.is_empty() {
        let banner = 30;
        let width = view.width.max(font::text_width(NO_LESION_TEXT, 2) + 2 * GAP);
        let mut img = Rgb::new(width, view.height + banner, BACKGROUND);
        draw_tile(&mut img, ((width - view.width) / 2, 0), ct, None, None, shape[0] / 2, &view, spacing, &[]);
        let tw = font::text_width(NO_LESION_TEXT, 2) as i64;
        img.text(NO_LESION_TEXT, (width as i64 - tw) / 2, view.height as i64 + 8, 2, TEXT);
        return img;
    }
    let cols = slices.len().min(COLUMNS);
    let rows = slices.len().div_ceil(cols);
    let (tw, th) = (view.width + GAP, view.height + GAP);
    let mut img = Rgb::new(cols * tw + GAP, rows * th + GAP, BACKGROUND);
    for (k, &z) in slices.iter().enumerate() {
        let origin = (GAP + (k % cols) * tw, GAP + (k / cols) * th);
        draw_tile(&mut img, origin, ct, Some(mask), None, z, &view, spacing, lesions);
    }
    img
}

/// A dark-blue to red to yellow ramp, rising in lightness so the order reads without colour.
fn ramp(v: f32) -> [u8; 3] {
    let stops: [(f32, [f32; 3]); 4] = [
        (0.0, [20.0, 20.0, 110.0]),
        (0.4, [170.0, 30.0, 140.0]),
        (0.7, [245.0, 110.0, 30.0]),
        (1.0, [255.0, 250.0, 120.0]),
    ];
    let k = stops.iter().rposition(|s| s.0 <= v).unwrap_or(0).min(stops.len() - 2);
    let (a, b) = (stops[k], stops[k + 1]);
    let t = ((v - a.0) / (b.0 - a.0)).clamp(0.0, 1.0);
    [0, 1, 2].map(|i| (a.1[i] + (b.1[i] - a.1[i]) * t).round() as u8)
}

/// The pseudo-label CAM picture: the mean of the fused maps (one per tap layer) as a colour
/// ramp over the CT, with the pseudo mask outlined, on up to `MAX_TILES` positive slices spread
/// evenly; no positive slice gives the "NO HEMORRHAGE FOUND" picture.
pub fn render_cams(
    ct: &Array3<f32>,
    mask: &Array3<u8>,
    fused: &[Array3<f32>],
    positive: &[bool],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
) -> Rgb {
    let pos: Vec<usize> = (0..positive.len()).filter(|&z| positive[z]).collect();
    if pos.is_empty() || fused.is_empty() {
        return render(ct, &Array3::zeros(mask.raw_dim()), spacing, affine, &[]);
    }
    let n = pos.len().min(MAX_TILES);
    let slices: Vec<usize> = (0..n).map(|k| pos[k * pos.len() / n]).collect();
    let mut mean = Array3::<f32>::zeros(ct.raw_dim());
    for f in fused {
        mean += f;
    }
    mean /= fused.len() as f32;
    let shape = [ct.shape()[0], ct.shape()[1], ct.shape()[2]];
    let view = View::new(shape, spacing, affine);
    let cols = n.min(COLUMNS);
    let rows = n.div_ceil(cols);
    let (tw, th) = (view.width + GAP, view.height + GAP);
    let mut img = Rgb::new(cols * tw + GAP, rows * th + GAP, BACKGROUND);
    for (k, &z) in slices.iter().enumerate() {
        let origin = (GAP + (k % cols) * tw, GAP + (k / cols) * th);
        draw_tile(&mut img, origin, ct, Some(mask), Some(&mean), z, &view, spacing, &[]);
    }
    img
}

/// Refuses, before any work, an overlay path that does not end in .png.
pub fn check_path(path: Option<&Path>, flag: &str) -> Result<()> {
    match path {
        Some(p) if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) => {
            Err(Error::arg(format!("{flag} {} must name a .png file", p.display())))
        }
        _ => Ok(()),
    }
}

/// Writes `img` as an 8-bit RGB PNG, atomically (a temporary file renamed into place).
pub fn write_png(path: &Path, img: &Rgb) -> Result<()> {
    ichseg::io::atomic::write_atomic(path, |w| {
        let mut enc = png::Encoder::new(w, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        // Noisy CT compresses poorly with the fast defaults; a montage is small enough to take time.
        enc.set_compression(png::Compression::Best);
        enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let mut writer = enc.write_header().map_err(|e| Error::image(path, e.to_string()))?;
        writer.write_image_data(&img.pixels).map_err(|e| Error::image(path, e.to_string()))?;
        writer.finish().map_err(|e| Error::image(path, e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ichseg::lesions::find_lesions;

    const RAS: [[f64; 4]; 4] = [[0.5, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    const SPACING: [f64; 3] = [0.5, 1.0, 5.0];

    /// 4 slices of 40 rows x 60 columns, anisotropic in plane; a blob on slices 1 and 2.
    fn case() -> (Array3<f32>, Array3<u8>) {
        let ct = Array3::from_shape_fn((4, 40, 60), |(z, y, x)| (z * 7 + y + x) as f32);
        let mask = Array3::from_shape_fn((4, 40, 60), |(z, y, x)| {
            u8::from((1..=2).contains(&z) && (15..25).contains(&y) && (20..38).contains(&x))
        });
        (ct, mask)
    }

    #[test]
    fn sizes_follow_square_mm_pixels() {
        let (ct, mask) = case();
        let view = View::new([4, 40, 60], SPACING, &RAS);
        // 0.5 mm pixels: 60 x 0.5 mm across = 60 px, 40 x 1 mm down = 80 px.
        assert_eq!((view.width, view.height, view.pixel_mm), (60, 80, 0.5));
        let lesions = find_lesions(mask.view(), SPACING, &RAS);
        let img = render(&ct, &mask, SPACING, &RAS, &lesions);
        assert_eq!((img.width, img.height), (2 * (60 + GAP) + GAP, 80 + 2 * GAP));
        assert_eq!(view.letters, ['R', 'L', 'A', 'P']);
    }

    #[test]
    fn outline_is_exactly_the_mask_border() {
        let (ct, mask) = case();
        let lesions = find_lesions(mask.view(), SPACING, &RAS);
        let img = render(&ct, &mask, SPACING, &RAS, &lesions);
        let view = View::new([4, 40, 60], SPACING, &RAS);
        let shape = [4, 40, 60];
        for (k, z) in [1usize, 2].into_iter().enumerate() {
            let ox = GAP + k * (view.width + GAP);
            let fg = |px: i64, py: i64| {
                px >= 0 && py >= 0 && (px as usize) < view.width && (py as usize) < view.height && {
                    let (x, y) = view.voxel(px as usize, py as usize, shape, SPACING);
                    mask[[z, y, x]] != 0
                }
            };
            let mut outlined = 0;
            for py in 0..view.height as i64 {
                for px in 0..view.width as i64 {
                    let border =
                        fg(px, py) && [(1, 0), (-1, 0), (0, 1), (0, -1)].iter().any(|&(dx, dy)| !fg(px + dx, py + dy));
                    let red = img.get(ox + px as usize, GAP + py as usize) == OUTLINE;
                    assert_eq!(red, border, "slice {z} pixel ({px}, {py})");
                    outlined += red as usize;
                }
            }
            // The blob is 18 x 10 voxels = 18 x 20 px: its perimeter ring has 2*(18+20)-4 pixels.
            assert_eq!(outlined, 72);
        }
    }

    #[test]
    fn lesion_free_volume_says_so() {
        let (ct, _) = case();
        let mask = Array3::<u8>::zeros((4, 40, 60));
        let img = render(&ct, &mask, SPACING, &RAS, &[]);
        let tw = font::text_width(NO_LESION_TEXT, 2);
        assert_eq!((img.width, img.height), (tw + 2 * GAP, 80 + 30));
        assert!(img.pixels.chunks(3).all(|p| p != OUTLINE));
        // The banner below the slice holds the message's white pixels.
        let lit = (80..img.height)
            .flat_map(|y| (0..img.width).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get(x, y) == TEXT)
            .count();
        assert!(lit > 100, "{lit} text pixels in the banner");
    }

    #[test]
    fn a_flipped_x_axis_mirrors_the_data_not_the_picture() {
        let (ct, mask) = case();
        let mut flipped = RAS;
        flipped[0][0] = -0.5;
        let v = View::new([4, 40, 60], SPACING, &flipped);
        assert!(!v.flip_across && View::new([4, 40, 60], SPACING, &RAS).flip_across);
        // Same anatomy stored with x reversed: the radiological picture must not change.
        let ct_f = ct.slice(ndarray::s![.., .., ..;-1]).to_owned();
        let mask_f = mask.slice(ndarray::s![.., .., ..;-1]).to_owned();
        let a = render(&ct, &mask, SPACING, &RAS, &find_lesions(mask.view(), SPACING, &RAS));
        let b = render(&ct_f, &mask_f, SPACING, &flipped, &find_lesions(mask_f.view(), SPACING, &flipped));
        assert!(a.pixels == b.pixels);
        // Letters come from the nearest axes: a scan stored with rows along x swaps them over.
        let swapped = [[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let s = View::new([4, 40, 60], SPACING, &swapped);
        assert_eq!((s.across, s.letters), (1, ['R', 'L', 'A', 'P']));
        let lps = [[-0.5, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert!(!View::new([4, 40, 60], SPACING, &lps).flip_across);
        assert!(!View::new([4, 40, 60], SPACING, &lps).flip_down);
    }

    /// The patient's right (world +x in RAS+) is on the tile's left, as the report's side says.
    #[test]
    fn the_patients_left_is_on_the_tiles_right() {
        let ct = Array3::<f32>::zeros((2, 40, 60));
        // Columns 5..15 of 60, +x along the columns: the lowest x, towards the patient's left.
        let mask =
            Array3::from_shape_fn((2, 40, 60), |(_, y, x)| u8::from((15..25).contains(&y) && (5..15).contains(&x)));
        let view = View::new([2, 40, 60], SPACING, &RAS);
        assert_eq!(view.letters, ['R', 'L', 'A', 'P']);
        let lesions = find_lesions(mask.view(), SPACING, &RAS);
        let img = render(&ct, &mask, SPACING, &RAS, &lesions);
        let red: Vec<usize> = (0..view.height)
            .flat_map(|y| (0..view.width).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get(GAP + x, GAP + y) == OUTLINE)
            .map(|(x, _)| x)
            .collect();
        assert!(!red.is_empty() && red.iter().all(|&x| x > view.width / 2), "{red:?}");
    }

    #[test]
    fn non_png_paths_are_refused() {
        assert!(check_path(Some(Path::new("a.jpg")), "--overlay").is_err());
        assert!(check_path(Some(Path::new("a.PNG")), "--overlay").is_ok());
        assert!(check_path(None, "--overlay").is_ok());
    }
}
