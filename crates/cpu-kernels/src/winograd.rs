//! 3x3, stride-1 convolutions on the CPU by Winograd's minimal filtering F(4x4, 3x3) (Lavin &
//! Gray 2016): each 4x4 output tile costs 36 multiplications per channel pair instead of 144.
//!
//! tract lowers these convolutions to im2col + matrix product at about half the speed
//! onnxruntime reaches on the same cores (docs/BENCHMARKS.md); cpu_rewrite.rs puts
//! [`WinogradConv`] in their place:
//! - the kernel is transformed, U = G g Gᵀ, into 36 matrices `[cout][cin]`: once, when the
//!   plan is made, or during each convolution, a few output channels at a time, so that the
//!   plan keeps the kernel and not U, 4x its size: the widest layers do so by default, every
//!   layer in low-memory plans ([`KernelForm::for_layer`]; docs/BENCHMARKS.md, Memory);
//! - the input is cut into overlapping 6x6 tiles, transformed V = Bᵀ d B, a block of tile rows at
//!   a time so that V stays in cache;
//! - 36 matrix products M = U V ([`sgemm`], at the op's instruction-set level);
//! - each tile's output is Aᵀ M A plus the bias.
//!
//! The transforms run vectorised across the tiles of a row: input rows are first split into the
//! four column phases of the tile grid, so that tile `tx`'s column `j` is phase `j % 4` at index
//! `tx + j / 4`. Results agree with direct convolution to about 1e-6 of the output's scale
//! (tests below).

use crate::conv::{executor_threads, run_tasks, simd, with_buffer, with_kernel_buffer, ConvParts, ConvWeights, OutPtr};
use crate::sgemm::{panel_width, sgemm, sgemm_panel};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Output tile side.
const TILE: usize = 4;
/// Input tile side (TILE + kernel - 1).
const ALPHA: usize = 6;
/// Points of the transformed tile: one matrix product each.
const POINTS: usize = ALPHA * ALPHA;

/// Tiles transformed together (one vector register of f32 per value with AVX2).
const LANES: usize = 8;
type Lane = [f32; LANES];

/// G g for one kernel column (or row) of three values per lane.
#[inline(always)]
fn kernel_transform(g: [Lane; 3]) -> [Lane; ALPHA] {
    const SIXTH: f32 = 1. / 6.;
    let mut r = [[0f32; LANES]; ALPHA];
    for x in 0..LANES {
        let [a, b, c] = [g[0][x], g[1][x], g[2][x]];
        let (even, outer, inner) = (a + c, a * (SIXTH / 4.) + c * SIXTH, b * (SIXTH / 2.));
        r[0][x] = a * 0.25;
        r[1][x] = -(even + b) * SIXTH;
        r[2][x] = -(even - b) * SIXTH;
        r[3][x] = outer + inner;
        r[4][x] = outer - inner;
        r[5][x] = c;
    }
    r
}

/// Bᵀ d for one column (or row) of six values per lane, with shared terms.
#[inline(always)]
fn input_transform(d: [Lane; ALPHA]) -> [Lane; ALPHA] {
    let mut r = [[0f32; LANES]; ALPHA];
    for x in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][x], d[1][x], d[2][x], d[3][x], d[4][x], d[5][x]];
        r[0][x] = 4. * d0 - 5. * d2 + d4;
        r[1][x] = (d3 + d4) - 4. * (d1 + d2);
        r[2][x] = (d4 - d3) + 4. * (d1 - d2);
        r[3][x] = (d4 - d2) - 2. * (d1 - d3);
        r[4][x] = (d4 - d2) + 2. * (d1 - d3);
        r[5][x] = 4. * d1 - 5. * d3 + d5;
    }
    r
}

/// Aᵀ m for one column (or row) of six values per lane.
#[inline(always)]
fn output_transform(m: [Lane; ALPHA]) -> [Lane; TILE] {
    let mut r = [[0f32; LANES]; TILE];
    for x in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][x], m[1][x], m[2][x], m[3][x], m[4][x], m[5][x]];
        let (sum12, diff12, sum34, diff34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        r[0][x] = m0 + sum12 + sum34;
        r[1][x] = diff12 + 2. * diff34;
        r[2][x] = sum12 + 4. * sum34;
        r[3][x] = diff12 + 8. * diff34 + m5;
    }
    r
}

/// Channels below which the transforms outweigh the savings (a network's first layer).
const MIN_CHANNELS: usize = 4;
/// Tiles per block aimed at: wide enough for efficient matrix products.
const TARGET_TILES: usize = 192;
/// Bytes of V and M per block at most, so that a block stays in a core's cache.
const BLOCK_BYTES: usize = 4 << 20;
/// Bytes of V and M at most when the stages are shared out between threads (a stage block: the
/// whole image when it fits).
const STAGE_BYTES: usize = 32 << 20;
/// Output channels whose kernels are transformed together (rows of the products).
const KERNEL_CHUNK: usize = 32;

/// When a layer's kernel is transformed into U.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelForm {
    /// Once, when the plan is made; the op keeps U, `[POINTS][cout][cin]`.
    Transformed,
    /// During each convolution, [`KERNEL_CHUNK`] output channels at a time; the op keeps the
    /// kernel as `[cout][9][cin]`.
    PerConvolution,
}

/// Bytes of U above which even a default plan transforms the kernel per convolution.
const MAX_STORED_U: usize = 32 << 20;

impl KernelForm {
    /// The form for a layer of `cin` and `cout` channels: per convolution in low-memory plans,
    /// and in default plans for layers whose U would be over [`MAX_STORED_U`]: the widest layers,
    /// which hold most of a U-Net's weights, run on the smallest images, where the plan's copy
    /// of U saves little time (docs/BENCHMARKS.md, Memory).
    pub fn for_layer(cin: usize, cout: usize, low_memory: bool) -> Self {
        if low_memory || POINTS * cin * cout * 4 > MAX_STORED_U {
            KernelForm::PerConvolution
        } else {
            KernelForm::Transformed
        }
    }
}

/// A 3x3, stride-1, ungrouped f32 convolution in NCHW with constant weights, by F(4x4, 3x3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinogradConv {
    cin: usize,
    /// Input rows and columns the plan was built for.
    rows: usize,
    cols: usize,
    /// Zero padding: top, left, bottom, right.
    pads: [usize; 4],
    form: KernelForm,
    /// Bytes of V and M per stage block ([`STAGE_BYTES`]; smaller in tests).
    stage_bytes: usize,
    /// U or the kernel, as [`KernelForm`] says.
    conv: ConvWeights,
}

impl WinogradConv {
    /// Whether these channel counts are worth it: with fewer, the transforms outweigh the
    /// savings (a network's first layer).
    pub fn takes(cin: usize, cout: usize) -> bool {
        cin >= MIN_CHANNELS && cout >= MIN_CHANNELS
    }

    /// `kernel` is `[cout][cin][3][3]`, `bias` has cout values; the input channels come as
    /// `parts`; `form` says when the kernel is transformed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kernel: &[f32],
        bias: &[f32],
        cout: usize,
        rows: usize,
        cols: usize,
        pads: [usize; 4],
        parts: ConvParts,
        form: KernelForm,
    ) -> Self {
        let cin = parts.channels();
        assert_eq!(kernel.len(), cout * cin * 9);
        assert_eq!(bias.len(), cout);
        // [cout][9][cin]: each tap's weights contiguous over the input channels, which the
        // transform runs across
        let mut taps = vec![0f32; cout * 9 * cin];
        for (o, kernels) in kernel.chunks_exact(cin * 9).enumerate() {
            for (c, g) in kernels.chunks_exact(9).enumerate() {
                for (t, &value) in g.iter().enumerate() {
                    taps[(o * 9 + t) * cin + c] = value;
                }
            }
        }
        let weights = match form {
            KernelForm::PerConvolution => taps,
            KernelForm::Transformed => {
                let mut u = vec![0f32; POINTS * cout * cin];
                // SAFETY: u holds POINTS matrices of cout rows of cin values.
                unsafe { simd(|| transform_kernel(&taps, cin, 0..cout, u.as_mut_ptr())) };
                u
            }
        };
        let conv = ConvWeights::new(weights, bias, parts);
        WinogradConv { cin, rows, cols, pads, form, stage_bytes: STAGE_BYTES, conv }
    }

    fn cout(&self) -> usize {
        self.conv.cout
    }

    /// Output rows and columns.
    pub fn output_hw(&self) -> (usize, usize) {
        let [t, l, b, r] = self.pads;
        ((self.rows + t + b).saturating_sub(2), (self.cols + l + r).saturating_sub(2))
    }

    /// Convolves `images` NCHW images into `y` (NCHW, output size); `inputs` holds one NCHW
    /// batch per part, together the `cin` channels.
    ///
    /// Work is split in blocks of tile rows, each transformed, multiplied and transformed back
    /// by one thread while its data is in cache. When an image has too few blocks to keep the
    /// threads busy (the deep, small layers, whose weights dominate), each stage is shared out
    /// instead: input channels, then the 36 products (each weight matrix read once), then
    /// output channels.
    pub fn convolve(&self, inputs: &[&[f32]], images: usize, y: &mut [f32]) {
        let (oh, ow) = self.output_hw();
        let plane = self.rows * self.cols;
        assert_eq!(inputs.len(), self.conv.parts.sizes.len());
        for (x, channels) in inputs.iter().zip(&self.conv.parts.sizes) {
            assert_eq!(x.len(), images * channels * plane);
        }
        assert_eq!(y.len(), images * self.conv.cout * oh * ow);
        if oh == 0 || ow == 0 {
            return;
        }
        let geo = Geometry::new(oh, ow);
        let threads = executor_threads();
        let planes = |n: usize| -> Vec<Planes> {
            self.conv.parts.image_planes(inputs, n, plane).iter().map(|p| Planes(p.as_ptr())).collect()
        };
        let out = OutPtr(y.as_mut_ptr());
        let rows_per_block = geo.rows_per_block(self);
        if self.form == KernelForm::Transformed && geo.by_blocks(self, rows_per_block, threads) {
            let tasks: Vec<(usize, usize)> =
                (0..images).flat_map(|n| (0..geo.tile_rows).step_by(rows_per_block).map(move |ty| (n, ty))).collect();
            let image_planes: Vec<Vec<Planes>> = (0..images).map(planes).collect();
            let run = |&(n, ty0): &(usize, usize)| {
                let rows = rows_per_block.min(geo.tile_rows - ty0);
                let work = Work::new(self, &geo, rows);
                // SAFETY: each task writes its own image and tile rows of `y` and its own
                // buffers; the planes point into `inputs`, which outlive the loop.
                with_buffer(work.len(), |buffer| unsafe {
                    let work = work.at(buffer);
                    simd(|| {
                        self.transform_input(&geo, &image_planes[n], ty0, 0..self.cin, &work);
                        self.multiply(0..POINTS, &work);
                        self.transform_output(&geo, ty0, 0..self.conv.cout, &work, &out, n);
                    })
                })
            };
            run_tasks(&tasks, run);
            return;
        }
        // a stage's `stages` items in ranges, two per thread
        let shared = |stages: usize, stage: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
            let chunk = stages.div_ceil(2 * threads);
            let ranges: Vec<_> = (0..stages).step_by(chunk).map(|i| i..(i + chunk).min(stages)).collect();
            run_tasks(&ranges, |range| stage(range.clone()))
        };
        let rows_per_stage = geo.rows_per_stage(self);
        for n in 0..images {
            let image_planes = planes(n);
            for ty0 in (0..geo.tile_rows).step_by(rows_per_stage) {
                let work = Work::new(self, &geo, rows_per_stage.min(geo.tile_rows - ty0));
                // SAFETY: the stages write disjoint channels, points and output channels of the
                // buffer and of image n in `y`; everything outlives the loops.
                with_buffer(work.len(), |buffer| unsafe {
                    let work = work.at(buffer);
                    shared(self.cin, &|c| simd(|| self.transform_input(&geo, &image_planes, ty0, c, &work)));
                    match self.form {
                        KernelForm::Transformed => shared(POINTS, &|p| simd(|| self.multiply(p, &work))),
                        KernelForm::PerConvolution => {
                            let chunks = self.conv.cout.div_ceil(KERNEL_CHUNK);
                            shared(chunks, &|k| {
                                // the buffer first, so that the work inside is compiled for the CPU's level
                                with_kernel_buffer(POINTS * KERNEL_CHUNK * self.cin, |u| {
                                    simd(|| self.transform_and_multiply(k, u, &work))
                                })
                            })
                        }
                    }
                    shared(self.conv.cout, &|o| simd(|| self.transform_output(&geo, ty0, o, &work, &out, n)));
                })
            }
        }
    }

    /// V for input `channels` of the block of `work.rows` tile rows from `ty0`.
    ///
    /// # Safety
    /// `planes` point to the image's input planes; `work` to a buffer no one else writes
    /// these channels of.
    #[inline(always)]
    unsafe fn transform_input(
        &self,
        geo: &Geometry,
        planes: &[Planes],
        ty0: usize,
        channels: std::ops::Range<usize>,
        work: &Work,
    ) {
        let (cin, tw, stride) = (self.cin, geo.tile_cols, work.stride);
        let mut phases = vec![0f32; ALPHA * TILE * geo.phase_len];
        // with V kept only in panels, each channel's rows are made in a scratch first
        let in_panels = work.panels > 0;
        let mut scratch = if in_panels { vec![0f32; POINTS * stride] } else { Vec::new() };
        for c in channels {
            let (v, v_channels, v_channel) = if in_panels { (scratch.as_mut_ptr(), 1, 0) } else { (work.v, cin, c) };
            let plane = std::slice::from_raw_parts(planes[c].0, self.rows * self.cols);
            for r in 0..work.rows {
                self.split_phases(geo, plane, ty0 + r, &mut phases);
                for t0 in (0..tw).step_by(LANES) {
                    // d[i][j]: row i, column j of LANES consecutive tiles
                    let mut d = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for (i, row) in d.iter_mut().enumerate() {
                        for (j, lane) in row.iter_mut().enumerate() {
                            let at = (i * TILE + j % TILE) * geo.phase_len + j / TILE + t0;
                            lane.copy_from_slice(&phases[at..at + LANES]);
                        }
                    }
                    // V = Bᵀ d B: columns first, then rows
                    let mut t = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for j in 0..ALPHA {
                        let column = input_transform(std::array::from_fn(|i| d[i][j]));
                        for k in 0..ALPHA {
                            t[k][j] = column[k];
                        }
                    }
                    for (k, row) in t.iter().enumerate() {
                        for (l, lane) in input_transform(*row).iter().enumerate() {
                            let at = ((k * ALPHA + l) * v_channels + v_channel) * stride + r * tw + t0;
                            std::ptr::copy_nonoverlapping(lane.as_ptr(), v.add(at), LANES);
                        }
                    }
                }
            }
            // this channel's rows into the panels, while they are in cache
            if in_panels {
                for point in 0..POINTS {
                    let from = v.add(point * stride);
                    for q in 0..work.panels {
                        let to = work.vp.add(((point * work.panels + q) * cin + c) * work.panel);
                        let first = q * work.panel;
                        std::ptr::copy_nonoverlapping(from.add(first), to, work.panel.min(work.tiles - first));
                    }
                }
            }
        }
    }

    /// M = U V for these transform `points`.
    ///
    /// # Safety
    /// `work` holds V for all channels; no one else writes these points of M.
    #[inline(always)]
    unsafe fn multiply(&self, points: std::ops::Range<usize>, work: &Work) {
        let (cin, cout, stride) = (self.cin, self.conv.cout, work.stride);
        for point in points {
            // row-major [cout][cin] x [cin][tiles] -> [cout][tiles], rows `stride` apart
            sgemm(
                self.conv.level,
                cout,
                work.tiles,
                cin,
                work.m.add(point * cout * work.stride),
                stride,
                false,
                self.conv.weights.as_ptr().add(point * cout * cin),
                cin,
                work.v.add(point * cin * work.stride),
                stride,
            );
        }
    }

    /// M = U V for all points and the output channels of these `chunks` of [`KERNEL_CHUNK`],
    /// each chunk's U transformed from the kernel first ([`KernelForm::PerConvolution`]).
    ///
    /// # Safety
    /// `work` holds V for all channels; no one else writes these output channels of M; `u`
    /// holds POINTS x KERNEL_CHUNK x cin values.
    #[inline(always)]
    unsafe fn transform_and_multiply(&self, chunks: std::ops::Range<usize>, u: &mut [f32], work: &Work) {
        let (cin, cout, stride) = (self.cin, self.conv.cout, work.stride);
        for chunk in chunks {
            let outs = chunk * KERNEL_CHUNK..((chunk + 1) * KERNEL_CHUNK).min(cout);
            let rows = outs.len();
            assert!(u.len() >= POINTS * rows * cin);
            transform_kernel(&self.conv.weights, cin, outs.clone(), u.as_mut_ptr());
            for point in 0..POINTS {
                for q in 0..work.panels {
                    let first = q * work.panel;
                    sgemm_panel(
                        self.conv.level,
                        rows,
                        work.panel.min(work.tiles - first),
                        cin,
                        work.m.add((point * cout + outs.start) * stride + first),
                        stride,
                        false,
                        u.as_ptr().add(point * rows * cin),
                        cin,
                        work.vp.add((point * work.panels + q) * cin * work.panel),
                    );
                }
            }
        }
    }

    /// Output channels `outs` of image `n` for the block's tile rows: Aᵀ M A + bias (and Relu).
    ///
    /// # Safety
    /// `work` holds M for all points; `out` points to the whole output batch, of which no one
    /// else writes these channels and rows.
    #[inline(always)]
    unsafe fn transform_output(
        &self,
        geo: &Geometry,
        ty0: usize,
        outs: std::ops::Range<usize>,
        work: &Work,
        out: &OutPtr,
        n: usize,
    ) {
        let (cout, tw, stride) = (self.conv.cout, geo.tile_cols, work.stride);
        let (oh, ow) = (geo.out_rows, geo.out_cols);
        for o in outs {
            let bias = self.conv.bias[o];
            for r in 0..work.rows {
                let ty = ty0 + r;
                for t0 in (0..tw).step_by(LANES) {
                    let mut m = [[[0f32; LANES]; ALPHA]; ALPHA];
                    for (k, row) in m.iter_mut().enumerate() {
                        for (l, lane) in row.iter_mut().enumerate() {
                            let at = ((k * ALPHA + l) * cout + o) * stride + r * tw + t0;
                            std::ptr::copy_nonoverlapping(work.m.add(at), lane.as_mut_ptr(), LANES);
                        }
                    }
                    // Y = Aᵀ M A: columns first, then rows
                    let mut partial = [[[0f32; LANES]; ALPHA]; TILE];
                    for l in 0..ALPHA {
                        let column = output_transform(std::array::from_fn(|k| m[k][l]));
                        for i in 0..TILE {
                            partial[i][l] = column[i];
                        }
                    }
                    for (i, row) in partial.iter().enumerate() {
                        let oy = ty * TILE + i;
                        if oy >= oh {
                            break;
                        }
                        let y = output_transform(*row);
                        let dst = std::slice::from_raw_parts_mut(out.0.add(((n * cout + o) * oh + oy) * ow), ow);
                        for lane in 0..LANES.min(tw - t0) {
                            for (j, values) in y.iter().enumerate() {
                                if let Some(d) = dst.get_mut((t0 + lane) * TILE + j) {
                                    let value = values[lane] + bias;
                                    *d = if self.conv.parts.relu { value.max(0.) } else { value };
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The six input rows under tile row `ty`, zero-padded and split by column phase:
    /// `phases[i][p][t] = input[ty*4 + i - top][t*4 + p - left]`.
    fn split_phases(&self, geo: &Geometry, plane: &[f32], ty: usize, phases: &mut [f32]) {
        let [top, left, _, _] = self.pads;
        for i in 0..ALPHA {
            let dst = &mut phases[i * TILE * geo.phase_len..][..TILE * geo.phase_len];
            let y = (ty * TILE + i) as isize - top as isize;
            if y < 0 || y >= self.rows as isize {
                dst.fill(0.);
                continue;
            }
            let row = &plane[y as usize * self.cols..][..self.cols];
            for p in 0..TILE {
                let dst = &mut dst[p * geo.phase_len..][..geo.phase_len];
                for (t, d) in dst.iter_mut().enumerate() {
                    let x = (t * TILE + p) as isize - left as isize;
                    *d = if x >= 0 && (x as usize) < self.cols { row[x as usize] } else { 0. };
                }
            }
        }
    }
}

/// U = G g Gᵀ for output channels `outs` of `taps` (`[cout][9][cin]`) into `dst`,
/// `[POINTS][outs.len()][cin]`, computed in f32 across the input channels.
///
/// # Safety
/// `dst` must be valid for writes of `POINTS * outs.len() * cin` values.
#[inline(always)]
unsafe fn transform_kernel(taps: &[f32], cin: usize, outs: std::ops::Range<usize>, dst: *mut f32) {
    let rows = outs.len();
    for (r, o) in outs.enumerate() {
        let g = &taps[o * 9 * cin..][..9 * cin];
        for c0 in (0..cin).step_by(LANES) {
            let lanes = LANES.min(cin - c0);
            // t[i][j]: tap (i, j) of LANES consecutive input channels (zeros past the last);
            // copies of a constant length where the lanes are full, so that they stay vector moves
            let mut t = [[[0f32; LANES]; 3]; 3];
            for (k, lane) in t.iter_mut().flatten().enumerate() {
                let from = g.as_ptr().add(k * cin + c0);
                if lanes == LANES {
                    std::ptr::copy_nonoverlapping(from, lane.as_mut_ptr(), LANES);
                } else {
                    std::ptr::copy_nonoverlapping(from, lane.as_mut_ptr(), lanes);
                }
            }
            // U = G g Gᵀ: columns first, then rows
            let mut columns = [[[0f32; LANES]; 3]; ALPHA];
            for j in 0..3 {
                let column = kernel_transform([t[0][j], t[1][j], t[2][j]]);
                for k in 0..ALPHA {
                    columns[k][j] = column[k];
                }
            }
            for (k, row) in columns.iter().enumerate() {
                for (l, lane) in kernel_transform(*row).iter().enumerate() {
                    let to = dst.add(((k * ALPHA + l) * rows + r) * cin + c0);
                    if lanes == LANES {
                        std::ptr::copy_nonoverlapping(lane.as_ptr(), to, LANES);
                    } else {
                        std::ptr::copy_nonoverlapping(lane.as_ptr(), to, lanes);
                    }
                }
            }
        }
    }
}

/// Tile grid of one image.
struct Geometry {
    out_rows: usize,
    out_cols: usize,
    tile_rows: usize,
    tile_cols: usize,
    /// Length of one column phase: one tile more than the grid, for the tiles' last columns.
    phase_len: usize,
}

impl Geometry {
    fn new(out_rows: usize, out_cols: usize) -> Self {
        let tile_cols = out_cols.div_ceil(TILE);
        // lane groups read up to LANES - 1 tiles past the grid, and one more for the last columns
        let phase_len = tile_cols.next_multiple_of(LANES) + 1;
        Geometry { out_rows, out_cols, tile_rows: out_rows.div_ceil(TILE), tile_cols, phase_len }
    }

    /// Tile rows per block: about TARGET_TILES tiles, V and M within BLOCK_BYTES.
    fn rows_per_block(&self, conv: &WinogradConv) -> usize {
        let bytes_per_row = POINTS * (conv.cin + conv.cout()) * self.tile_cols * 4;
        TARGET_TILES.div_ceil(self.tile_cols).min(BLOCK_BYTES / bytes_per_row.max(1)).clamp(1, self.tile_rows)
    }

    /// Tile rows per stage block: its work buffer within the op's stage bytes (or one row).
    fn rows_per_stage(&self, conv: &WinogradConv) -> usize {
        let fits = |rows: &usize| Work::new(conv, self, *rows).len() * 4 <= conv.stage_bytes;
        (1..=self.tile_rows).rev().find(fits).unwrap_or(1)
    }

    /// Whether to work by blocks: each block reads all the transformed weights again, so blocks
    /// pay while those re-reads cost less than moving a whole image's V and M through memory,
    /// and while there are blocks enough for the threads.
    fn by_blocks(&self, conv: &WinogradConv, rows_per_block: usize, threads: usize) -> bool {
        let blocks = self.tile_rows.div_ceil(rows_per_block);
        let weights = POINTS * conv.cin * conv.cout();
        let image = POINTS * (conv.cin + conv.cout()) * self.tile_rows * self.tile_cols;
        blocks >= 2 * threads && blocks * weights <= image
    }
}

/// Where one block's V ([POINTS][cin][stride]) and M ([POINTS][cout][stride]) live; rows are
/// `stride` long because a lane group may run up to LANES tiles past the block's last.
struct Work {
    rows: usize,
    tiles: usize,
    stride: usize,
    /// Floats of V, after which M starts (none with the kernel transformed per convolution: V
    /// is then only in panels).
    v_len: usize,
    m_len: usize,
    /// With the kernel transformed per convolution, V in panels of `panel` tiles,
    /// `[POINTS][panels][cin][panel]`, which the products read in place (after M); else 0.
    panel: usize,
    panels: usize,
    vp_len: usize,
    v: *mut f32,
    m: *mut f32,
    vp: *mut f32,
}

impl Work {
    /// The layout for `rows` tile rows, not yet placed ([`Work::at`]).
    fn new(conv: &WinogradConv, geo: &Geometry, rows: usize) -> Self {
        let tiles = rows * geo.tile_cols;
        let stride = tiles + LANES;
        let panel = match conv.form {
            KernelForm::Transformed => 0,
            KernelForm::PerConvolution => panel_width(conv.conv.level),
        };
        let v_len = if panel > 0 { 0 } else { POINTS * conv.cin * stride };
        let m_len = POINTS * conv.cout() * stride;
        let panels = if panel > 0 { tiles.div_ceil(panel) } else { 0 };
        let vp_len = POINTS * panels * conv.cin * panel;
        let null = std::ptr::null_mut();
        Work { rows, tiles, stride, v_len, m_len, panel, panels, vp_len, v: null, m: null, vp: null }
    }
    fn len(&self) -> usize {
        self.v_len + self.m_len + self.vp_len
    }
    /// Placed in `buffer`, which must be at least `len` long.
    fn at(self, buffer: &mut [f32]) -> Self {
        assert!(buffer.len() >= self.len());
        let v = buffer.as_mut_ptr();
        let m = v.wrapping_add(self.v_len);
        Work { v, m, vp: m.wrapping_add(self.m_len), ..self }
    }
}

/// An input plane, shared read-only between threads.
#[derive(Clone, Copy)]
struct Planes(*const f32);
// SAFETY: read-only pointers into the op's inputs, which outlive the parallel loops.
unsafe impl Send for Planes {}
unsafe impl Sync for Planes {}
// SAFETY: the stages write disjoint parts of the buffers (see `convolve`).
unsafe impl Send for Work {}
unsafe impl Sync for Work {}

impl Op for WinogradConv {
    fn name(&self) -> StaticName {
        "WinogradConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let kernel = match self.form {
            KernelForm::Transformed => "",
            KernelForm::PerConvolution => ", kernel transformed per convolution",
        };
        Ok(vec![format!("F(4x4,3x3) {}, pads {:?}{kernel}", self.conv.describe(), self.pads)])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output_hw = |shape: [usize; 2]| {
            ensure!(
                shape == [self.rows, self.cols],
                "WinogradConv planned for {}x{}, given {shape:?}",
                self.rows,
                self.cols
            );
            let (rows, cols) = self.output_hw();
            Ok([rows, cols])
        };
        self.conv.evaluate(&inputs, output_hw, |x, images, y| self.convolve(x, images, y))
    }
}

impl TypedOp for WinogradConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (oh, ow) = self.output_hw();
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact([n, self.conv.cout.to_dim(), oh.to_dim(), ow.to_dim()])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{levels, random, reference, threads, unit_window};

    // The transforms' matrices (Lavin & Gray, F(4x4, 3x3)), against which the hand-factored
    // `input_transform` and `output_transform` are checked.
    const BT: [[f32; ALPHA]; ALPHA] = [
        [4., 0., -5., 0., 1., 0.],
        [0., -4., -4., 1., 1., 0.],
        [0., 4., -4., -1., 1., 0.],
        [0., -2., -1., 2., 1., 0.],
        [0., 2., -1., -2., 1., 0.],
        [0., 4., 0., -5., 0., 1.],
    ];
    const AT: [[f32; ALPHA]; TILE] =
        [[1., 1., 1., 1., 1., 0.], [0., 1., -1., 2., -2., 0.], [0., 1., 1., 4., 4., 0.], [0., 1., -1., 8., -8., 1.]];

    /// Kernel transform (U = G g Gᵀ).
    const G: [[f64; 3]; ALPHA] = [
        [1. / 4., 0., 0.],
        [-1. / 6., -1. / 6., -1. / 6.],
        [-1. / 6., 1. / 6., -1. / 6.],
        [1. / 24., 1. / 12., 1. / 6.],
        [1. / 24., -1. / 12., 1. / 6.],
        [0., 0., 1.],
    ];

    #[test]
    fn factored_transforms_are_the_matrices() {
        let values = random(ALPHA * LANES, 7);
        let lanes: [Lane; ALPHA] = std::array::from_fn(|i| std::array::from_fn(|x| values[i * LANES + x]));
        let u = kernel_transform([lanes[0], lanes[1], lanes[2]]);
        let (v, y) = (input_transform(lanes), output_transform(lanes));
        for x in 0..LANES {
            for k in 0..ALPHA {
                let want: f64 = (0..3).map(|i| G[k][i] * lanes[i][x] as f64).sum();
                assert!((u[k][x] as f64 - want).abs() < 1e-6, "G row {k}");
            }
            for k in 0..ALPHA {
                let want: f32 = (0..ALPHA).map(|i| BT[k][i] * lanes[i][x]).sum();
                assert!((v[k][x] - want).abs() < 1e-5, "B row {k}");
            }
            for k in 0..TILE {
                let want: f32 = (0..ALPHA).map(|i| AT[k][i] * lanes[i][x]).sum();
                assert!((y[k][x] - want).abs() < 1e-5, "A row {k}");
            }
        }
    }

    /// Winograd against direct convolution; the input channels come in `sizes` (a folded
    /// Concat) and `relu` folds a Relu.
    #[allow(clippy::too_many_arguments)]
    fn check(
        n: usize,
        sizes: &[usize],
        cout: usize,
        h: usize,
        w: usize,
        pads: [usize; 4],
        threads_: usize,
        relu: bool,
    ) {
        let parts = ConvParts { sizes: sizes.to_vec(), relu };
        let weights = random(cout * parts.channels() * 9, 1);
        let bias = random(cout, 2);
        let inputs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(k, &c)| random(n * c * h * w, 3 + k as u64)).collect();
        let reference = reference(&weights, &bias, &inputs, &parts, n, cout, &unit_window(3, pads, [h, w]));
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let forms = [KernelForm::Transformed, KernelForm::PerConvolution];
        // the whole image in one stage block, one tile row per stage block, and a few
        for (level, form, stage_bytes) in levels()
            .into_iter()
            .flat_map(|l| forms.map(|f| (l, f)))
            .flat_map(|(l, f)| [(l, f, STAGE_BYTES), (l, f, 1), (l, f, 200 << 10)])
        {
            let mut conv = WinogradConv::new(&weights, &bias, cout, h, w, pads, parts.clone(), form);
            conv.conv.level = level;
            conv.stage_bytes = stage_bytes;
            let (oh, ow) = conv.output_hw();
            let mut y = vec![f32::NAN; n * cout * oh * ow];
            let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            threads(threads_, || conv.convolve(&slices, n, &mut y));
            let err = y.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{level} {form:?} stage {stage_bytes} B {n}x{sizes:?}->{cout} {h}x{w} pads {pads:?}: error {err} (scale {scale})"
            );
        }
    }

    #[test]
    fn matches_direct_convolution() {
        check(1, &[4], 4, 8, 8, [1, 1, 1, 1], 1, false);
        // edges: sizes not multiple of the tile, several images, asymmetric and no padding
        check(2, &[5], 7, 13, 17, [1, 1, 1, 1], 2, false);
        check(1, &[6], 5, 11, 9, [0, 0, 0, 0], 1, false);
        check(1, &[4], 6, 10, 7, [0, 1, 2, 1], 2, false);
        check(3, &[4], 4, 3, 2, [1, 1, 1, 1], 2, false);
        // wide channels on a small image: the stages shared out over the whole image; more
        // output channels than one kernel chunk, and a last chunk cut short
        check(1, &[64], 32, 40, 36, [1, 1, 1, 1], 2, false);
        check(2, &[13], 70, 10, 12, [1, 1, 1, 1], 2, true);
        // a large image with few channels: by blocks of tile rows
        let conv = WinogradConv::new(
            &[0.; 4 * 4 * 9],
            &[0.; 4],
            4,
            101,
            98,
            [1, 1, 1, 1],
            ConvParts::single(4),
            KernelForm::Transformed,
        );
        let geo = Geometry::new(101, 98);
        assert!(geo.by_blocks(&conv, geo.rows_per_block(&conv), 2));
        check(2, &[4], 4, 101, 98, [1, 1, 1, 1], 2, true);
        check(1, &[4], 5, 101, 98, [1, 0, 1, 2], 1, false);
    }

    /// A stage block is the most tile rows whose work buffer fits the stage bytes (V only in
    /// panels, each padded to a whole panel, with the kernel transformed per convolution).
    #[test]
    fn stage_blocks_are_the_most_rows_that_fit() {
        for form in [KernelForm::Transformed, KernelForm::PerConvolution] {
            let mut conv =
                WinogradConv::new(&[0.; 32 * 64 * 9], &[0.; 32], 32, 40, 36, [1; 4], ConvParts::single(64), form);
            let geo = Geometry::new(40, 36);
            let bytes = |rows: usize| Work::new(&conv, &geo, rows).len() * 4;
            assert_eq!(Work::new(&conv, &geo, 3).v_len == 0, form == KernelForm::PerConvolution);
            for (stage_bytes, rows) in [(bytes(3), 3), (bytes(4) - 1, 3), (1, 1), (STAGE_BYTES, geo.tile_rows)] {
                conv.stage_bytes = stage_bytes;
                assert_eq!(geo.rows_per_stage(&conv), rows, "{form:?}, {stage_bytes} B");
            }
        }
    }

    /// Default plans keep U unless it is over MAX_STORED_U; low-memory plans never keep it.
    #[test]
    fn kernels_are_transformed_per_convolution_in_low_memory_plans_and_for_the_widest_layers() {
        assert_eq!(KernelForm::for_layer(256, 512, false), KernelForm::Transformed);
        assert_eq!(KernelForm::for_layer(512, 512, false), KernelForm::PerConvolution);
        assert_eq!(KernelForm::for_layer(1024, 512, false), KernelForm::PerConvolution);
        assert_eq!(KernelForm::for_layer(16, 16, true), KernelForm::PerConvolution);
        assert!(POINTS * 256 * 512 * 4 <= MAX_STORED_U && POINTS * 512 * 512 * 4 > MAX_STORED_U);
    }

    #[test]
    fn folded_concat_and_relu_match_direct_convolution() {
        check(2, &[3, 5], 6, 12, 10, [1, 1, 1, 1], 2, true);
        check(1, &[4, 4, 2], 5, 9, 9, [1, 1, 1, 1], 1, false);
    }
}
