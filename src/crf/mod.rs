//! Fully connected CRF refinement of a binary mask (METHOD.md section 4 item 5, "dCRF").
//!
//! Mean-field inference in a dense CRF with Gaussian edge potentials (Kraehenbuehl & Koltun,
//! "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011), with
//! message passing done by the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in
//! time linear in the number of pixels. Two labels: background (0) and hemorrhage (1).
//!
//! The computation follows pydensecrf (`DenseCRF2D`, as packaged by pydensecrf2 1.1) step by
//! step, so that its output can be compared pixel by pixel:
//!
//! - **Unary** as `unary_from_labels(labels, 2, gt_prob=label_confidence, zero_unsure=False)`:
//!   `-ln(confidence)` for the given label and `-ln(1 - confidence)` for the other.
//! - **Gaussian (smoothness) kernel** as `addPairwiseGaussian(sxy, compat)`: features
//!   `(x / sxy, y / sxy)`.
//! - **Bilateral (appearance) kernel** as `addPairwiseBilateral(sxy, srgb, rgb, compat)` with the
//!   grey slice repeated in three identical RGB channels: features
//!   `(x / sxy, y / sxy, v / srgb, v / srgb, v / srgb)`. The three copies make the kernel
//!   effectively `sqrt(3)` times narrower in intensity than one channel would; we keep them
//!   so `bilateral_srgb` means what it means in AffinityNet's and pydensecrf's code.
//! - Both kernels use Potts compatibility and pydensecrf's default `NORMALIZE_SYMMETRIC`
//!   normalisation: `K(Q) = D^-1/2 L(D^-1/2 Q)` with `L` the lattice filter and `D = L(1)`.
//!   The lattice filter does not exclude a pixel's own contribution (nor does pydensecrf).
//! - **Mean field**: `Q = softmax(-U)`; each iteration `Q = softmax(-U + sum_k w_k K_k(Q))`,
//!   which equals the Potts form `-U - sum_k w_k sum_{l' != l} K_k(Q)_{l'}` up to a per-pixel
//!   constant. The map is the arg-max of `Q`, ties going to background.
//!
//! The lattice reproduces pydensecrf's SSE code path on x86-64: round-half-to-even when finding
//! the enclosing simplex, the `[1/2, 1, 1/2]` blur along each of the `d + 1` lattice axes, and
//! the `1 / (1 + 2^-d)` slicing constant. Lattice keys are 32-bit, so unlike pydensecrf (16-bit)
//! very large images cannot overflow them.
//!
//! Layout: the lattice in `lattice.rs`; the mean-field iterations of a batch of slices on the GPU
//! in `kernels.cu`, driven by `device.rs` (the flat layout and the loop, tested on the CPU with
//! the kernels compiled as C++) and `cuda.rs` (the device); the lattices stay CPU-built.

#[cfg(feature = "gpu")]
pub(crate) mod cuda;
#[cfg(any(feature = "gpu", test))]
mod device;
mod lattice;

use crate::error::{Error, Result};
use lattice::{Lattice, Scratch};
use ndarray::{Array2, ArrayView2};

/// Parameters of [`refine`]. Defaults are AffinityNet's post-processing settings (METHOD.md
/// section 4 item 5); spatial widths are in pixels, intensity widths in grey levels (0..255).
#[derive(Debug, Clone, PartialEq)]
pub struct CrfParams {
    /// Spatial standard deviation (pixels) of the Gaussian smoothness kernel. Default 3.
    pub gaussian_sxy: f32,
    /// Potts weight of the Gaussian smoothness kernel. Default 3.
    pub gaussian_compat: f32,
    /// Spatial standard deviation (pixels) of the bilateral appearance kernel. Default 80.
    pub bilateral_sxy: f32,
    /// Intensity standard deviation (grey levels, per RGB channel; the grey value fills three
    /// identical channels as in pydensecrf) of the bilateral kernel. Default 13.
    pub bilateral_srgb: f32,
    /// Potts weight of the bilateral appearance kernel. Default 10.
    pub bilateral_compat: f32,
    /// Mean-field iterations. Default 10; 0 returns the input labels.
    pub iterations: usize,
    /// Probability the unary gives the input label at each pixel, in (0, 1) exclusive; the
    /// other label gets `1 - label_confidence`. Default 0.7.
    pub label_confidence: f32,
}

impl Default for CrfParams {
    fn default() -> Self {
        CrfParams {
            gaussian_sxy: 3.0,
            gaussian_compat: 3.0,
            bilateral_sxy: 80.0,
            bilateral_srgb: 13.0,
            bilateral_compat: 10.0,
            iterations: 10,
            label_confidence: 0.7,
        }
    }
}

impl CrfParams {
    /// Checks every value is finite and in range.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("gaussian_sxy", self.gaussian_sxy),
            ("gaussian_compat", self.gaussian_compat),
            ("bilateral_sxy", self.bilateral_sxy),
            ("bilateral_srgb", self.bilateral_srgb),
            ("bilateral_compat", self.bilateral_compat),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::arg(format!("crf: {name} must be finite and > 0, got {v}")));
            }
        }
        let c = self.label_confidence;
        if !(c.is_finite() && c > 0.0 && c < 1.0) {
            return Err(Error::arg(format!("crf: label_confidence must be in (0, 1), got {c}")));
        }
        Ok(())
    }
}

/// Number of labels (background, hemorrhage).
const LABELS: usize = 2;

/// Refines a binary label map of one slice with a fully connected CRF.
///
/// `image` is the windowed slice as grey levels 0..255 and `labels` the mask to refine (0 =
/// background, 1 = hemorrhage), both `[rows, cols]`. Returns the maximum-a-posteriori label
/// map of the mean-field approximation, values 0/1, same shape.
///
/// Errors if the shapes differ or are empty, a label is neither 0 nor 1, or a parameter is out
/// of range (see [`CrfParams::validate`]).
pub fn refine(image: ArrayView2<u8>, labels: ArrayView2<u8>, params: &CrfParams) -> Result<Array2<u8>> {
    check(image, labels, params)?;
    if params.iterations == 0 {
        return Ok(labels.to_owned());
    }
    refine_with(image, labels, params, &smoothness_kernel(image.dim(), params))
}

/// [`refine`] with the smoothness kernel of the slice's grid given: it depends only on the
/// grid, so one serves every slice of a volume ([`smoothness_kernel`]). The caller has run
/// [`check`].
pub(crate) fn refine_with(
    image: ArrayView2<u8>,
    labels: ArrayView2<u8>,
    params: &CrfParams,
    smoothness: &Kernel,
) -> Result<Array2<u8>> {
    if params.iterations == 0 {
        return Ok(labels.to_owned());
    }
    let (rows, cols) = image.dim();
    let n = rows * cols;
    if smoothness.lattice.n != n {
        return Err(Error::arg(format!(
            "crf: a smoothness kernel of {} pixels for a {rows}x{cols} slice",
            smoothness.lattice.n
        )));
    }
    let (p_energy, n_energy) = unary_energies(params);
    let mut neg_unary = vec![0f32; n * LABELS];
    for (i, &l) in labels.iter().enumerate() {
        for k in 0..LABELS {
            neg_unary[i * LABELS + k] = -(if k == l as usize { p_energy } else { n_energy });
        }
    }
    let appearance = appearance_kernel(image, params);
    let kernels = [smoothness, &appearance];

    let mut q = vec![0f32; n * LABELS];
    softmax_into(&mut q, &neg_unary);
    let mut energy = vec![0f32; n * LABELS];
    let mut msg = vec![0f32; n * LABELS];
    let mut scratch = Scratch::default();
    for _ in 0..params.iterations {
        energy.copy_from_slice(&neg_unary);
        for kernel in kernels {
            kernel.filter(&q, &mut msg, &mut scratch);
            for (e, m) in energy.iter_mut().zip(&msg) {
                // pydensecrf: tmp1 -= (-w * K(Q)).
                *e -= -kernel.weight * m;
            }
        }
        softmax_into(&mut q, &energy);
    }

    let out: Vec<u8> = q.chunks_exact(LABELS).map(|p| u8::from(p[1] > p[0])).collect();
    Ok(Array2::from_shape_vec((rows, cols), out).expect("shape matches pixel count"))
}

/// The checks of [`refine`]: parameters in range, same non-empty shapes, labels 0 or 1.
pub(crate) fn check(image: ArrayView2<u8>, labels: ArrayView2<u8>, params: &CrfParams) -> Result<()> {
    params.validate()?;
    if image.dim() != labels.dim() {
        return Err(Error::arg(format!(
            "crf: image is {:?} but labels are {:?}; they must have the same [rows, cols]",
            image.dim(),
            labels.dim()
        )));
    }
    let (rows, cols) = image.dim();
    if rows == 0 || cols == 0 {
        return Err(Error::arg(format!("crf: empty image {rows}x{cols}")));
    }
    if let Some(bad) = labels.iter().find(|&&l| l > 1) {
        return Err(Error::arg(format!("crf: labels must be 0 or 1, found {bad}")));
    }
    Ok(())
}

/// The unary energies of the given label and of the other one, computed in f64 and stored in
/// f32 as numpy does.
pub(crate) fn unary_energies(params: &CrfParams) -> (f32, f32) {
    let conf = params.label_confidence as f64;
    ((-conf.ln()) as f32, (-((1.0 - conf) / (LABELS as f64 - 1.0)).ln()) as f32)
}

/// The smoothness kernel of a `[rows, cols]` grid, the same for every slice of that grid.
/// Features in pydensecrf's order: x (column) then y (row), pixel index row * cols + col.
pub(crate) fn smoothness_kernel((rows, cols): (usize, usize), params: &CrfParams) -> Kernel {
    let gs = params.gaussian_sxy;
    let mut gauss = Vec::with_capacity(rows * cols * 2);
    for r in 0..rows {
        for c in 0..cols {
            gauss.extend_from_slice(&[c as f32 / gs, r as f32 / gs]);
        }
    }
    Kernel::new(&gauss, 2, params.gaussian_compat)
}

/// The appearance (bilateral) kernel of one slice.
pub(crate) fn appearance_kernel(image: ArrayView2<u8>, params: &CrfParams) -> Kernel {
    let (bs, br) = (params.bilateral_sxy, params.bilateral_srgb);
    let mut bilat = Vec::with_capacity(image.len() * 5);
    for ((r, c), &v) in image.indexed_iter() {
        let g = v as f32 / br;
        bilat.extend_from_slice(&[c as f32 / bs, r as f32 / bs, g, g, g]);
    }
    Kernel::new(&bilat, 5, params.bilateral_compat)
}

/// Per-pixel softmax over the labels (`expAndNormalize` in pydensecrf).
fn softmax_into(out: &mut [f32], logits: &[f32]) {
    for (o, x) in out.chunks_exact_mut(LABELS).zip(logits.chunks_exact(LABELS)) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (oo, &xx) in o.iter_mut().zip(x) {
            *oo = (xx - max).exp();
            sum += *oo;
        }
        for oo in o.iter_mut() {
            *oo /= sum;
        }
    }
}

/// One Gaussian kernel with symmetric normalisation and a Potts weight.
pub(crate) struct Kernel {
    pub(crate) lattice: Lattice,
    /// `1 / sqrt(L(1))` per pixel.
    pub(crate) norm: Vec<f32>,
    pub(crate) weight: f32,
}

impl Kernel {
    fn new(features: &[f32], d: usize, weight: f32) -> Kernel {
        let lattice = Lattice::new(features, d);
        let n = lattice.n;
        let mut norm = vec![0f32; n];
        let mut scratch = Scratch::default();
        lattice.compute(&vec![1f32; n], 1, &mut norm, &mut scratch);
        for v in &mut norm {
            *v = (1.0 / (*v as f64 + 1e-20).sqrt()) as f32;
        }
        Kernel { lattice, norm, weight }
    }

    /// `out = D^-1/2 L(D^-1/2 q)` for `LABELS` values per pixel.
    fn filter(&self, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
        let mut scaled = std::mem::take(&mut scratch.input);
        scaled.clear();
        for (p, &s) in q.chunks_exact(LABELS).zip(&self.norm) {
            scaled.extend(p.iter().map(|&v| v * s));
        }
        self.lattice.compute(&scaled, LABELS, out, scratch);
        for (p, &s) in out.chunks_exact_mut(LABELS).zip(&self.norm) {
            for v in p {
                *v *= s;
            }
        }
        scratch.input = scaled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn noise(rows: usize, cols: usize, amp: f32, seed: u64) -> Array2<f32> {
        let mut s = seed;
        Array2::from_shape_fn((rows, cols), |_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
        })
    }

    #[test]
    fn uniform_image_keeps_clean_map() {
        let image = Array2::from_elem((40, 48), 100u8);
        let p = CrfParams::default();
        for value in [0u8, 1] {
            let clean = Array2::from_elem((40, 48), value);
            assert_eq!(refine(image.view(), clean.view(), &p).unwrap(), clean);
        }
        // On a flat image the 80-pixel bilateral kernel smooths globally, so a partial mask
        // collapses to the majority label; pydensecrf does the same (checked: the 20x24 box
        // vanishes, the 30x36 box fills the 40x48 image).
        let boxed = |r0, r1, c0, c1| {
            Array2::from_shape_fn((40, 48), |(r, c)| u8::from((r0..r1).contains(&r) && (c0..c1).contains(&c)))
        };
        assert!(refine(image.view(), boxed(10, 30, 12, 36).view(), &p).unwrap().iter().all(|&v| v == 0));
        assert!(refine(image.view(), boxed(5, 35, 6, 42).view(), &p).unwrap().iter().all(|&v| v == 1));
        // With the appearance kernel made local, a clean half-and-half map stays put.
        let local = CrfParams { bilateral_sxy: 3.0, bilateral_compat: 1.0, ..p };
        let halves = boxed(0, 40, 0, 24);
        assert_eq!(refine(image.view(), halves.view(), &local).unwrap(), halves);
    }

    #[test]
    fn isolated_wrong_pixel_is_flipped() {
        let image = (noise(32, 32, 4.0, 7) + 90.0).mapv(|v| v as u8);
        let mut labels = Array2::zeros((32, 32));
        labels[[16, 16]] = 1;
        labels[[5, 27]] = 1;
        let out = refine(image.view(), labels.view(), &CrfParams::default()).unwrap();
        assert!(out.iter().all(|&v| v == 0));
        let mut labels = Array2::from_elem((32, 32), 1u8);
        labels[[10, 9]] = 0;
        let out = refine(image.view(), labels.view(), &CrfParams::default()).unwrap();
        assert!(out.iter().all(|&v| v == 1));
    }

    #[test]
    fn label_leaking_across_edge_is_pulled_back() {
        // Bright disc (the bleed) on a dark textured background; the label is the disc dilated
        // by three pixels, leaking over the strong edge.
        let (rows, cols) = (64, 64);
        let base = noise(rows, cols, 6.0, 11);
        let inside = |r: usize, c: usize, rad: f32| {
            let (dr, dc) = (r as f32 - 32.0, c as f32 - 30.0);
            dr * dr + dc * dc <= rad * rad
        };
        let image = Array2::from_shape_fn((rows, cols), |(r, c)| {
            let v = if inside(r, c, 12.0) { 200.0 } else { 60.0 };
            (v + base[[r, c]]).clamp(0.0, 255.0) as u8
        });
        let truth = Array2::from_shape_fn((rows, cols), |(r, c)| u8::from(inside(r, c, 12.0)));
        let labels = Array2::from_shape_fn((rows, cols), |(r, c)| u8::from(inside(r, c, 15.0)));
        let errors = |m: &Array2<u8>| m.iter().zip(&truth).filter(|(a, b)| a != b).count();
        let out = refine(image.view(), labels.view(), &CrfParams::default()).unwrap();
        let (before, after) = (errors(&labels), errors(&out));
        assert!(after * 5 < before, "errors before {before}, after {after}");
    }

    #[test]
    fn invalid_inputs_error() {
        let image = Array2::<u8>::zeros((8, 8));
        let labels = Array2::<u8>::zeros((8, 8));
        let p = CrfParams::default();
        assert!(refine(image.view(), Array2::<u8>::zeros((8, 9)).view(), &p).is_err());
        assert!(refine(Array2::<u8>::zeros((0, 8)).view(), Array2::<u8>::zeros((0, 8)).view(), &p).is_err());
        let mut bad = labels.clone();
        bad[[1, 1]] = 2;
        assert!(refine(image.view(), bad.view(), &p).is_err());
        for q in [
            CrfParams { gaussian_sxy: 0.0, ..p.clone() },
            CrfParams { gaussian_compat: -1.0, ..p.clone() },
            CrfParams { bilateral_sxy: f32::NAN, ..p.clone() },
            CrfParams { bilateral_srgb: f32::INFINITY, ..p.clone() },
            CrfParams { bilateral_compat: 0.0, ..p.clone() },
            CrfParams { label_confidence: 1.0, ..p.clone() },
            CrfParams { label_confidence: 0.0, ..p.clone() },
        ] {
            assert!(refine(image.view(), labels.view(), &q).is_err(), "{q:?}");
        }
        assert!(refine(image.view(), labels.view(), &p).is_ok());
        // A smoothness kernel built for another grid.
        let other = smoothness_kernel((8, 9), &p);
        let err = refine_with(image.view(), labels.view(), &p, &other).unwrap_err().to_string();
        assert!(err.contains("smoothness kernel of 72 pixels"), "{err}");
    }
}
