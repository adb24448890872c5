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
//! The transforms run vectorised across the tiles of a row, 16 or 8 at a time ([`Vector`] at
//! the op's level): a tile's column `j` is read from the row's values split by position
//! modulo 4 ([`Vector::load_quarters`]), and the output tiles' columns are interleaved back
//! ([`Vector::store_interleaved`]). Results agree with direct convolution to about 1e-6 of the
//! output's scale (tests below).

use crate::conv::{executor_threads, run_tasks, with_buffer, with_kernel_buffer, ConvParts, ConvWeights, OutPtr};
use crate::sgemm::{cpu_level, panel_width, sgemm, sgemm_panel};
use crate::vector::{at_level, ForLevel, Vector, MAX_LANES};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Output tile side.
const TILE: usize = 4;
/// Input tile side (TILE + kernel - 1).
const ALPHA: usize = 6;
/// Points of the transformed tile: one matrix product each.
const POINTS: usize = ALPHA * ALPHA;

/// G g for one kernel column (or row) of three vectors.
///
/// # Safety
/// The CPU has `V`'s instruction set.
#[inline(always)]
unsafe fn kernel_transform<V: Vector>([a, b, c]: [V; 3]) -> [V; ALPHA] {
    const SIXTH: f32 = 1. / 6.;
    let (even, outer, inner) = (a.add(c), a.scale(SIXTH / 4.).add(c.scale(SIXTH)), b.scale(SIXTH / 2.));
    [a.scale(0.25), even.add(b).scale(-SIXTH), even.sub(b).scale(-SIXTH), outer.add(inner), outer.sub(inner), c]
}

/// Bᵀ d for one column (or row) of six vectors, with shared terms.
///
/// # Safety
/// The CPU has `V`'s instruction set.
#[inline(always)]
unsafe fn input_transform<V: Vector>([d0, d1, d2, d3, d4, d5]: [V; ALPHA]) -> [V; ALPHA] {
    let (d42, d13) = (d4.sub(d2), d1.sub(d3).scale(2.));
    [
        d0.scale(4.).sub(d2.scale(5.)).add(d4),
        d3.add(d4).sub(d1.add(d2).scale(4.)),
        d4.sub(d3).add(d1.sub(d2).scale(4.)),
        d42.sub(d13),
        d42.add(d13),
        d1.scale(4.).sub(d3.scale(5.)).add(d5),
    ]
}

/// Aᵀ m for one column (or row) of six vectors.
///
/// # Safety
/// The CPU has `V`'s instruction set.
#[inline(always)]
unsafe fn output_transform<V: Vector>([m0, m1, m2, m3, m4, m5]: [V; ALPHA]) -> [V; TILE] {
    let (sum12, diff12, sum34, diff34) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
    [
        m0.add(sum12).add(sum34),
        diff12.add(diff34.scale(2.)),
        sum12.add(sum34.scale(4.)),
        diff12.add(diff34.scale(8.)).add(m5),
    ]
}

/// Input values a group of tiles reads from each row, at most.
const GROUP_SPAN: usize = TILE * MAX_LANES + TILE;

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
/// Values between the points of a chunk's U beyond its `KERNEL_CHUNK x cin`: one cache line, so
/// that the 36 points a kernel's transform writes at once do not fall into the same cache sets
/// (their distance is otherwise a multiple of 4 KiB; docs/BENCHMARKS.md, "Measurements the
/// code's comments refer to").
const CHUNK_POINT_PAD: usize = 16;

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
                let transform =
                    KernelTransform { taps: &taps, cin, outs: 0..cout, dst: u.as_mut_ptr(), point_stride: cout * cin };
                unsafe { at_level(transform, cpu_level()) };
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
    /// by one thread while its data is in cache. When the batch has too few blocks to keep the
    /// threads busy, or blocks would read the weights more often than the images' V and M
    /// (the deep, small layers, whose weights dominate), each stage is shared out instead:
    /// input channels, then the 36 products (each weight matrix read once), then output
    /// channels. Such a stage block takes the tile rows of as many images as fit its bytes, so
    /// that the weights are read (and, per convolution, transformed) once for them all and the
    /// products are wide even where an image has few tiles.
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
        let image_planes: Vec<Vec<Planes>> = (0..images)
            .map(|n| self.conv.parts.image_planes(inputs, n, plane).iter().map(|p| Planes(p.as_ptr())).collect())
            .collect();
        let out = OutPtr(y.as_mut_ptr());
        let rows_per_block = geo.rows_per_block(self);
        if self.form == KernelForm::Transformed && geo.by_blocks(self, rows_per_block, images, threads) {
            // each block within one image
            let tasks: Vec<usize> = (0..images)
                .flat_map(|n| (0..geo.tile_rows).step_by(rows_per_block).map(move |ty| n * geo.tile_rows + ty))
                .collect();
            let run = |&row0: &usize| {
                let rows = rows_per_block.min(geo.tile_rows - row0 % geo.tile_rows);
                let work = Work::new(self, &geo, rows);
                // SAFETY: each task writes its own tile rows of `y` and its own buffers; the
                // planes point into `inputs`, which outlive the loop.
                with_buffer(work.len(), |buffer| unsafe {
                    let work = work.at(buffer);
                    let stage = Stage::Block(&image_planes, &out);
                    at_level(Step { conv: self, geo: &geo, row0, work: &work, stage }, self.conv.level)
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
        let rows = images * geo.tile_rows;
        let rows_per_stage = geo.rows_per_stage(self, rows);
        for row0 in (0..rows).step_by(rows_per_stage) {
            let work = Work::new(self, &geo, rows_per_stage.min(rows - row0));
            // SAFETY: the stages write disjoint channels, points and output channels of the
            // buffer and of the block's tile rows in `y`; everything outlives the loops.
            with_buffer(work.len(), |buffer| unsafe {
                let work = work.at(buffer);
                shared(self.cin, &|c| self.at(&geo, row0, &work, Stage::Input(&image_planes, c)));
                match self.form {
                    KernelForm::Transformed => shared(POINTS, &|p| self.multiply(p, &work)),
                    KernelForm::PerConvolution => {
                        let chunks = self.conv.cout.div_ceil(KERNEL_CHUNK);
                        shared(chunks, &|k| {
                            // the buffer first, so that the work inside is compiled for the CPU's level
                            with_kernel_buffer(POINTS * chunk_point_stride(KERNEL_CHUNK, self.cin), |u| {
                                self.at(&geo, row0, &work, Stage::KernelProducts(k, u))
                            })
                        })
                    }
                }
                shared(self.conv.cout, &|o| self.at(&geo, row0, &work, Stage::Output(o, &out)));
            })
        }
    }

    /// Runs `stage` of the block of `work.rows` tile rows from the batch's `row0` at the op's
    /// level.
    ///
    /// # Safety
    /// As the stage's function says.
    unsafe fn at(&self, geo: &Geometry, row0: usize, work: &Work, stage: Stage) {
        at_level(Step { conv: self, geo, row0, work, stage }, self.conv.level)
    }

    /// V for input `channels` of the block of `work.rows` tile rows from the batch's `row0`.
    ///
    /// # Safety
    /// `planes` point to each image's input planes; `work` to a buffer no one else writes
    /// these channels of.
    #[inline(always)]
    unsafe fn transform_input<V: Vector>(
        &self,
        geo: &Geometry,
        planes: &[Vec<Planes>],
        row0: usize,
        channels: std::ops::Range<usize>,
        work: &Work,
    ) {
        let (cin, tw, stride) = (self.cin, geo.tile_cols, work.stride);
        // a group's six input rows: in the plane, or zero-padded copies where the group
        // reaches past the plane's edges
        let mut edges = [[0f32; GROUP_SPAN]; ALPHA];
        // with V kept only in panels, each channel's rows are made in a scratch first
        let in_panels = work.panels > 0;
        let mut scratch = if in_panels { vec![0f32; POINTS * stride] } else { Vec::new() };
        for c in channels {
            let (v, v_channels, v_channel) = if in_panels { (scratch.as_mut_ptr(), 1, 0) } else { (work.v, cin, c) };
            for r in 0..work.rows {
                let (n, ty) = geo.image_row(row0 + r);
                let plane = std::slice::from_raw_parts(planes[n][c].0, self.rows * self.cols);
                for t0 in (0..tw).step_by(V::LANES) {
                    let rows = self.group_rows(plane, ty, t0, V::LANES, &mut edges);
                    // d[j][i]: column j, row i of LANES consecutive tiles (columns 4 and 5 are
                    // the next tiles' 0 and 1)
                    let mut d = [[V::splat(0.); ALPHA]; ALPHA];
                    for i in 0..ALPHA {
                        let at = rows[i];
                        let [d0, d1, d2, d3] = V::load_quarters(at);
                        let [d4, d5, _, _] = V::load_quarters(at.add(TILE));
                        (d[0][i], d[1][i], d[2][i], d[3][i], d[4][i], d[5][i]) = (d0, d1, d2, d3, d4, d5);
                    }
                    // V = Bᵀ d B: columns first, then rows
                    let mut rows_t = [[V::splat(0.); ALPHA]; ALPHA];
                    for j in 0..ALPHA {
                        let column = input_transform(d[j]);
                        for k in 0..ALPHA {
                            rows_t[k][j] = column[k];
                        }
                    }
                    for (k, row) in rows_t.iter().enumerate() {
                        let row = input_transform(*row);
                        for (l, value) in row.iter().enumerate() {
                            value.store(v.add(((k * ALPHA + l) * v_channels + v_channel) * stride + r * tw + t0));
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
    unsafe fn transform_and_multiply<V: Vector>(&self, chunks: std::ops::Range<usize>, u: &mut [f32], work: &Work) {
        let (cin, cout, stride) = (self.cin, self.conv.cout, work.stride);
        for chunk in chunks {
            let outs = chunk * KERNEL_CHUNK..((chunk + 1) * KERNEL_CHUNK).min(cout);
            let rows = outs.len();
            let point_stride = chunk_point_stride(rows, cin);
            assert!(u.len() >= POINTS * point_stride);
            transform_kernel::<V>(&self.conv.weights, cin, outs.clone(), u.as_mut_ptr(), point_stride);
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
                        u.as_ptr().add(point * point_stride),
                        cin,
                        work.vp.add((point * work.panels + q) * cin * work.panel),
                    );
                }
            }
        }
    }

    /// Output channels `outs` of the block's tile rows (from the batch's `row0`): Aᵀ M A + bias
    /// (and Relu).
    ///
    /// # Safety
    /// `work` holds M for all points; `out` points to the whole output batch, of which no one
    /// else writes these channels and rows.
    #[inline(always)]
    unsafe fn transform_output<V: Vector>(
        &self,
        geo: &Geometry,
        row0: usize,
        outs: std::ops::Range<usize>,
        work: &Work,
        out: &OutPtr,
    ) {
        let (cout, tw, stride) = (self.conv.cout, geo.tile_cols, work.stride);
        let (oh, ow) = (geo.out_rows, geo.out_cols);
        let (relu, zero) = (self.conv.parts.relu, V::splat(0.));
        for o in outs {
            let bias = V::splat(self.conv.bias[o]);
            for r in 0..work.rows {
                let (n, ty) = geo.image_row(row0 + r);
                for t0 in (0..tw).step_by(V::LANES) {
                    // m[l][k]: column l, row k
                    let mut m = [[V::splat(0.); ALPHA]; ALPHA];
                    for (l, column) in m.iter_mut().enumerate() {
                        for (k, value) in column.iter_mut().enumerate() {
                            *value = V::load(work.m.add(((k * ALPHA + l) * cout + o) * stride + r * tw + t0));
                        }
                    }
                    // Y = Aᵀ M A: columns first, then rows
                    let mut rows_t = [[V::splat(0.); ALPHA]; TILE];
                    for l in 0..ALPHA {
                        let column = output_transform(m[l]);
                        for i in 0..TILE {
                            rows_t[i][l] = column[i];
                        }
                    }
                    for (i, row) in rows_t.iter().enumerate() {
                        let oy = ty * TILE + i;
                        if oy >= oh {
                            break;
                        }
                        let mut y = output_transform(*row);
                        for value in y.iter_mut() {
                            *value = value.add(bias);
                            if relu {
                                *value = value.max(zero);
                            }
                        }
                        // the tiles' columns side by side, as the output row has them
                        let (x, row) = (t0 * TILE, out.0.add(((n * cout + o) * oh + oy) * ow));
                        if x + TILE * V::LANES <= ow {
                            V::store_interleaved(y, row.add(x));
                        } else {
                            let mut values = [0f32; TILE * MAX_LANES];
                            V::store_interleaved(y, values.as_mut_ptr());
                            std::ptr::copy_nonoverlapping(values.as_ptr(), row.add(x), ow - x);
                        }
                    }
                }
            }
        }
    }

    /// Where the six input rows under tiles `t0..t0 + lanes` of tile row `ty` start: at the
    /// value the first tile's column 0 reads, followed by the `4 * lanes + 4` values the
    /// group reads. Those are in the plane unless the group reaches past its edges; then they
    /// are copied into `edges`, zero-padded.
    fn group_rows(
        &self,
        plane: &[f32],
        ty: usize,
        t0: usize,
        lanes: usize,
        edges: &mut [[f32; GROUP_SPAN]; ALPHA],
    ) -> [*const f32; ALPHA] {
        let [top, left, _, _] = self.pads;
        let span = TILE * lanes + TILE;
        let x0 = (t0 * TILE) as isize - left as isize;
        let inside = x0 >= 0 && x0 as usize + span <= self.cols;
        let mut rows = [std::ptr::null(); ALPHA];
        for (i, (row, edge)) in rows.iter_mut().zip(edges.iter_mut()).enumerate() {
            let y = (ty * TILE + i) as isize - top as isize;
            let input = (y >= 0 && y < self.rows as isize).then(|| &plane[y as usize * self.cols..][..self.cols]);
            *row = match input {
                Some(input) if inside => input[x0 as usize..].as_ptr(),
                _ => {
                    edge.fill(0.);
                    let (from, to) = (x0.max(0) as usize, (x0 + span as isize).clamp(0, self.cols as isize) as usize);
                    if let Some(input) = input.filter(|_| from < to) {
                        let at = (from as isize - x0) as usize;
                        edge[at..at + to - from].copy_from_slice(&input[from..to]);
                    }
                    edge.as_ptr()
                }
            };
        }
        rows
    }
}

/// Values from one point of a per-convolution U chunk of `rows` output channels to the next.
fn chunk_point_stride(rows: usize, cin: usize) -> usize {
    rows * cin + CHUNK_POINT_PAD
}

/// U = G g Gᵀ for output channels `outs` of `taps` (`[cout][9][cin]`) into `dst`,
/// `[POINTS][outs.len()][cin]` with the points `point_stride` values apart, computed in f32
/// across the input channels.
///
/// # Safety
/// `dst` must be valid for writes of `POINTS` runs of `outs.len() * cin` values `point_stride`
/// apart; the CPU has `V`'s instruction set.
#[inline(always)]
unsafe fn transform_kernel<V: Vector>(
    taps: &[f32],
    cin: usize,
    outs: std::ops::Range<usize>,
    dst: *mut f32,
    point_stride: usize,
) {
    for (r, o) in outs.enumerate() {
        let kernel = &taps[o * 9 * cin..][..9 * cin];
        for c0 in (0..cin).step_by(V::LANES) {
            let lanes = V::LANES.min(cin - c0);
            // g[j][i]: tap (i, j) of LANES consecutive input channels (zeros past the last)
            let mut g = [[V::splat(0.); 3]; 3];
            for k in 0..9 {
                let from = &kernel[k * cin + c0..][..lanes];
                g[k % 3][k / 3] = if lanes == V::LANES {
                    V::load(from.as_ptr())
                } else {
                    let mut part = [0f32; MAX_LANES];
                    part[..lanes].copy_from_slice(from);
                    V::load(part.as_ptr())
                };
            }
            // U = G g Gᵀ: columns first, then rows
            let mut rows_t = [[V::splat(0.); 3]; ALPHA];
            for j in 0..3 {
                let column = kernel_transform(g[j]);
                for k in 0..ALPHA {
                    rows_t[k][j] = column[k];
                }
            }
            for (k, row) in rows_t.iter().enumerate() {
                let row = kernel_transform(*row);
                for (l, value) in row.iter().enumerate() {
                    let to = dst.add((k * ALPHA + l) * point_stride + r * cin + c0);
                    if lanes == V::LANES {
                        value.store(to);
                    } else {
                        let mut part = [0f32; MAX_LANES];
                        value.store(part.as_mut_ptr());
                        std::ptr::copy_nonoverlapping(part.as_ptr(), to, lanes);
                    }
                }
            }
        }
    }
}

/// A stage of a convolution on one block, run at the op's level ([`at_level`]).
struct Step<'a> {
    conv: &'a WinogradConv,
    geo: &'a Geometry,
    /// The block's first tile row in the batch (image n's rows are n * tile_rows on).
    row0: usize,
    work: &'a Work,
    stage: Stage<'a>,
}

enum Stage<'a> {
    /// V for these input channels, from each image's planes.
    Input(&'a [Vec<Planes>], std::ops::Range<usize>),
    /// M for the output channels of these kernel chunks, U made in the buffer first.
    KernelProducts(std::ops::Range<usize>, &'a mut [f32]),
    /// These output channels from M.
    Output(std::ops::Range<usize>, &'a OutPtr),
    /// The whole block: V, M and the output.
    Block(&'a [Vec<Planes>], &'a OutPtr),
}

impl ForLevel for Step<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        let Step { conv, geo, row0, work, stage } = self;
        match stage {
            Stage::Input(planes, channels) => conv.transform_input::<V>(geo, planes, row0, channels, work),
            Stage::KernelProducts(chunks, u) => conv.transform_and_multiply::<V>(chunks, u, work),
            Stage::Output(outs, out) => conv.transform_output::<V>(geo, row0, outs, work, out),
            Stage::Block(planes, out) => {
                conv.transform_input::<V>(geo, planes, row0, 0..conv.cin, work);
                conv.multiply(0..POINTS, work);
                conv.transform_output::<V>(geo, row0, 0..conv.cout(), work, out);
            }
        }
    }
}

/// U for output channels `outs` ([`transform_kernel`]) at a level.
struct KernelTransform<'a> {
    taps: &'a [f32],
    cin: usize,
    outs: std::ops::Range<usize>,
    dst: *mut f32,
    point_stride: usize,
}

impl ForLevel for KernelTransform<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        transform_kernel::<V>(self.taps, self.cin, self.outs, self.dst, self.point_stride)
    }
}

/// Tile grid of one image; a batch's tile rows are its images' one after the other.
struct Geometry {
    out_rows: usize,
    out_cols: usize,
    tile_rows: usize,
    tile_cols: usize,
}

impl Geometry {
    fn new(out_rows: usize, out_cols: usize) -> Self {
        let tile_cols = out_cols.div_ceil(TILE);
        Geometry { out_rows, out_cols, tile_rows: out_rows.div_ceil(TILE), tile_cols }
    }

    /// Tile rows per block: about TARGET_TILES tiles, V and M within BLOCK_BYTES.
    fn rows_per_block(&self, conv: &WinogradConv) -> usize {
        let bytes_per_row = POINTS * (conv.cin + conv.cout()) * self.tile_cols * 4;
        TARGET_TILES.div_ceil(self.tile_cols).min(BLOCK_BYTES / bytes_per_row.max(1)).clamp(1, self.tile_rows)
    }

    /// Image and tile row of the batch's tile row `row`.
    fn image_row(&self, row: usize) -> (usize, usize) {
        (row / self.tile_rows, row % self.tile_rows)
    }

    /// Tile rows per stage block, of the batch's `rows`: its work buffer within the op's stage
    /// bytes (or one row).
    fn rows_per_stage(&self, conv: &WinogradConv, rows: usize) -> usize {
        let fits = |rows: &usize| Work::new(conv, self, *rows).len() * 4 <= conv.stage_bytes;
        (1..=rows).rev().find(fits).unwrap_or(1)
    }

    /// Whether to work by blocks: each block reads all the transformed weights again, so blocks
    /// pay while those re-reads cost less than moving an image's V and M through memory, and
    /// while the batch of `images` has blocks enough for the threads.
    fn by_blocks(&self, conv: &WinogradConv, rows_per_block: usize, images: usize, threads: usize) -> bool {
        let blocks = self.tile_rows.div_ceil(rows_per_block);
        let weights = POINTS * conv.cin * conv.cout();
        let image = POINTS * (conv.cin + conv.cout()) * self.tile_rows * self.tile_cols;
        images * blocks >= 2 * threads && blocks * weights <= image
    }
}

/// Where one block's V ([POINTS][cin][stride]) and M ([POINTS][cout][stride]) live; rows are
/// `stride` long because a lane group may run up to MAX_LANES tiles past the block's last.
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
        let stride = tiles + MAX_LANES;
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
        use crate::vector::Portable;
        const N: usize = Portable::LANES;
        let values = random(ALPHA * N, 7);
        let vectors = |values: &[f32]| -> [Portable; ALPHA] {
            // SAFETY: `values` holds ALPHA vectors.
            std::array::from_fn(|i| unsafe { Portable::load(values[i * N..].as_ptr()) })
        };
        let lanes = |vectors: &[Portable]| -> Vec<f32> {
            let mut out = vec![0f32; vectors.len() * N];
            for (i, v) in vectors.iter().enumerate() {
                // SAFETY: `out` holds a vector at each i.
                unsafe { v.store(out[i * N..].as_mut_ptr()) };
            }
            out
        };
        let d = vectors(&values);
        // SAFETY: plain Rust vectors run anywhere.
        let (u, v, y) = unsafe { (kernel_transform([d[0], d[1], d[2]]), input_transform(d), output_transform(d)) };
        let (u, v, y) = (lanes(&u), lanes(&v), lanes(&y));
        let at = |i: usize, x: usize| values[i * N + x];
        for x in 0..N {
            for k in 0..ALPHA {
                let want: f64 = (0..3).map(|i| G[k][i] * at(i, x) as f64).sum();
                assert!((u[k * N + x] as f64 - want).abs() < 1e-6, "G row {k}");
            }
            for k in 0..ALPHA {
                let want: f32 = (0..ALPHA).map(|i| BT[k][i] * at(i, x)).sum();
                assert!((v[k * N + x] - want).abs() < 1e-5, "B row {k}");
            }
            for k in 0..TILE {
                let want: f32 = (0..ALPHA).map(|i| AT[k][i] * at(i, x)).sum();
                assert!((y[k * N + x] - want).abs() < 1e-5, "A row {k}");
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
        // the whole batch in one stage block, one tile row per stage block, a few, and two (so
        // that stage blocks start inside images and reach into the next)
        for (level, form, stage_rows) in levels()
            .into_iter()
            .flat_map(|l| forms.map(|f| (l, f)))
            .flat_map(|(l, f)| [(l, f, None), (l, f, Some(1)), (l, f, Some(0)), (l, f, Some(2))])
        {
            let mut conv = WinogradConv::new(&weights, &bias, cout, h, w, pads, parts.clone(), form);
            conv.conv.level = level;
            let (oh, ow) = conv.output_hw();
            let geo = Geometry::new(oh, ow);
            conv.stage_bytes = match stage_rows {
                None => STAGE_BYTES,
                Some(0) => 200 << 10,
                Some(rows) => Work::new(&conv, &geo, rows).len() * 4,
            };
            let stage_bytes = conv.stage_bytes;
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
        // a batch of images of a few tiles each (a classifier's last layers): stage blocks
        // across images
        check(5, &[48], 40, 12, 12, [1, 1, 1, 1], 2, true);
        check(3, &[20], 36, 7, 5, [1, 1, 1, 1], 1, false);
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
        assert!(geo.by_blocks(&conv, geo.rows_per_block(&conv), 1, 2));
        check(2, &[4], 4, 101, 98, [1, 1, 1, 1], 2, true);
        // one block per image, but blocks enough in the batch
        let conv = WinogradConv::new(
            &[0.; 16 * 9],
            &[0.; 4],
            4,
            24,
            40,
            [1; 4],
            ConvParts::single(4),
            KernelForm::Transformed,
        );
        let geo = Geometry::new(24, 40);
        assert_eq!(geo.tile_rows.div_ceil(geo.rows_per_block(&conv)), 1);
        assert!(!geo.by_blocks(&conv, geo.rows_per_block(&conv), 1, 2));
        assert!(geo.by_blocks(&conv, geo.rows_per_block(&conv), 4, 2));
        check(4, &[4], 4, 24, 40, [1, 1, 1, 1], 2, false);
        check(1, &[4], 5, 101, 98, [1, 0, 1, 2], 1, false);
        // rows wide enough that groups of 16 tiles lie inside the input (read in place)
        check(1, &[4], 4, 9, 150, [1, 1, 1, 1], 1, false);
        check(1, &[5], 3, 6, 200, [0, 2, 1, 0], 2, true);
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
                assert_eq!(geo.rows_per_stage(&conv, geo.tile_rows), rows, "{form:?}, {stage_bytes} B");
                // a batch's stage block reaches into the next images
                if stage_bytes == STAGE_BYTES {
                    assert_eq!(geo.rows_per_stage(&conv, 3 * geo.tile_rows), 3 * geo.tile_rows);
                }
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
        const { assert!(POINTS * 256 * 512 * 4 <= MAX_STORED_U && POINTS * 512 * 512 * 4 > MAX_STORED_U) };
    }

    #[test]
    fn folded_concat_and_relu_match_direct_convolution() {
        check(2, &[3, 5], 6, 12, 10, [1, 1, 1, 1], 2, true);
        check(1, &[4, 4, 2], 5, 9, 9, [1, 1, 1, 1], 1, false);
    }
}
