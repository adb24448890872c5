//! The dense CRF's mean-field loop for a batch of slices on a device that runs `kernels.cu`:
//! the GPU ([`super::cuda`]) or, in the tests, the same kernels compiled for the CPU.
//!
//! The lattices are built on the CPU ([`super::kernels`], one per slice and kernel); this module
//! lays a batch's lattices out as flat arrays (pixels and vertices of slice `s` after those of
//! slice `s - 1`, one shared dummy vertex 0), turns each splat into a gather (per vertex, its
//! pixels in ascending order, as the CPU scatters them), and drives the kernels. Every sum then
//! runs in the CPU's order, so the result is the CPU's up to the device's `expf`.

use super::{unary_energies, CrfParams, Kernel, LABELS};
use crate::gpu::Res;

/// A device with buffers of `f32`, `u32` and `u8` and the kernels of `kernels.cu`, each launched
/// with one thread per element of its last argument (`n` pixels or `m` vertices).
#[allow(clippy::too_many_arguments)]
pub(crate) trait Device {
    type F;
    type U;
    type B;
    fn upload_f32(&self, v: &[f32]) -> Res<Self::F>;
    fn upload_u32(&self, v: &[u32]) -> Res<Self::U>;
    fn upload_u8(&self, v: &[u8]) -> Res<Self::B>;
    fn zeros_f32(&self, len: usize) -> Res<Self::F>;
    fn zeros_u8(&self, len: usize) -> Res<Self::B>;
    fn download_u8(&self, b: &Self::B) -> Res<Vec<u8>>;
    fn init(
        &self,
        labels: &Self::B,
        p_energy: f32,
        n_energy: f32,
        neg_unary: &mut Self::F,
        q: &mut Self::F,
        n: usize,
    ) -> Res<()>;
    fn scale(&self, q: &Self::F, norm: &Self::F, scaled: &mut Self::F, n: usize) -> Res<()>;
    fn splat(
        &self,
        start: &Self::U,
        pixel: &Self::U,
        weight: &Self::F,
        scaled: &Self::F,
        values: &mut Self::F,
        m: usize,
    ) -> Res<()>;
    fn blur(&self, neighbors: &Self::U, axis: usize, values: &Self::F, out: &mut Self::F, m: usize) -> Res<()>;
    fn slice(
        &self,
        offset: &Self::U,
        barycentric: &Self::F,
        d1: usize,
        alpha: f32,
        values: &Self::F,
        norm: &Self::F,
        msg: &mut Self::F,
        n: usize,
    ) -> Res<()>;
    fn update(
        &self,
        neg_unary: &Self::F,
        msg_a: &Self::F,
        w_a: f32,
        msg_b: &Self::F,
        w_b: f32,
        q: &mut Self::F,
        n: usize,
    ) -> Res<()>;
    fn argmax(&self, q: &Self::F, out: &mut Self::B, n: usize) -> Res<()>;
}

/// One kernel (smoothness or appearance) of every slice of a batch, flat.
struct FlatKernel {
    n: usize,
    m: usize,
    d1: usize,
    alpha: f32,
    weight: f32,
    /// Per pixel, its `d1` simplex vertices (1-based) and barycentric weights.
    offset: Vec<u32>,
    barycentric: Vec<f32>,
    /// Per axis `j` and vertex `i` (0-based), its two neighbours (1-based, 0 = none) at
    /// `(j * m + i) * 2`.
    neighbors: Vec<u32>,
    /// The splat as a gather: vertex `v` (0-based) takes `weight * value` of `pixel[e]` for `e`
    /// in `start[v]..start[v + 1]`, pixels ascending.
    start: Vec<u32>,
    pixel: Vec<u32>,
    weight_of: Vec<f32>,
    /// `1 / sqrt(L(1))` per pixel.
    norm: Vec<f32>,
}

fn flatten(kernels: &[&Kernel]) -> Res<FlatKernel> {
    let first = &kernels.first().ok_or("no slices")?.lattice;
    let d1 = first.d + 1;
    let n: usize = kernels.iter().map(|k| k.lattice.n).sum();
    let m: usize = kernels.iter().map(|k| k.lattice.m).sum();
    if n * d1 >= u32::MAX as usize || m * d1 * 2 >= u32::MAX as usize {
        return Err(format!("a CRF batch of {n} pixels and {m} lattice vertices is too large; use a smaller batch"));
    }
    let mut offset = Vec::with_capacity(n * d1);
    let mut barycentric = Vec::with_capacity(n * d1);
    let mut norm = Vec::with_capacity(n);
    let mut neighbors = vec![0u32; d1 * m * 2];
    let mut base = 0usize;
    for k in kernels {
        let l = &k.lattice;
        let shift = |v: u32| if v == 0 { 0 } else { v + base as u32 };
        offset.extend(l.offset.iter().map(|&v| shift(v)));
        barycentric.extend_from_slice(&l.barycentric);
        norm.extend_from_slice(&k.norm);
        for j in 0..d1 {
            for i in 0..l.m {
                for t in 0..2 {
                    neighbors[(j * m + base + i) * 2 + t] = shift(l.neighbors[(j * l.m + i) * 2 + t]);
                }
            }
        }
        base += l.m;
    }
    // Counting sort of the (pixel, vertex) pairs by vertex, stable in pixel order: 1-based
    // vertex v's count goes to start[v], and the running sum turns it into where v + 1 starts.
    let mut start = vec![0u32; m + 1];
    for &v in &offset {
        start[v as usize] += 1;
    }
    for v in 1..=m {
        start[v] += start[v - 1];
    }
    let mut fill = start[..m].to_vec();
    let mut pixel = vec![0u32; offset.len()];
    let mut weight_of = vec![0f32; offset.len()];
    for (e, (&v, &w)) in offset.iter().zip(&barycentric).enumerate() {
        let at = &mut fill[v as usize - 1];
        pixel[*at as usize] = (e / d1) as u32;
        weight_of[*at as usize] = w;
        *at += 1;
    }
    Ok(FlatKernel {
        n,
        m,
        d1,
        alpha: first.alpha(),
        weight: kernels[0].weight,
        offset,
        barycentric,
        neighbors,
        start,
        pixel,
        weight_of,
        norm,
    })
}

/// A flat kernel's arrays on the device, with its message buffers.
struct DeviceKernel<D: Device> {
    flat: FlatKernel,
    offset: D::U,
    barycentric: D::F,
    neighbors: D::U,
    start: D::U,
    pixel: D::U,
    weight_of: D::F,
    norm: D::F,
    values: D::F,
    blurred: D::F,
    msg: D::F,
}

impl<D: Device> DeviceKernel<D> {
    fn upload(dev: &D, flat: FlatKernel) -> Res<Self> {
        Ok(DeviceKernel {
            offset: dev.upload_u32(&flat.offset)?,
            barycentric: dev.upload_f32(&flat.barycentric)?,
            neighbors: dev.upload_u32(&flat.neighbors)?,
            start: dev.upload_u32(&flat.start)?,
            pixel: dev.upload_u32(&flat.pixel)?,
            weight_of: dev.upload_f32(&flat.weight_of)?,
            norm: dev.upload_f32(&flat.norm)?,
            values: dev.zeros_f32((flat.m + 1) * LABELS)?,
            blurred: dev.zeros_f32((flat.m + 1) * LABELS)?,
            msg: dev.zeros_f32(flat.n * LABELS)?,
            flat,
        })
    }

    /// `msg = D^-1/2 L(D^-1/2 q)`, the twin of `Kernel::filter`.
    fn filter(&mut self, dev: &D, q: &D::F, scaled: &mut D::F) -> Res<()> {
        let (n, m, d1) = (self.flat.n, self.flat.m, self.flat.d1);
        dev.scale(q, &self.norm, scaled, n)?;
        dev.splat(&self.start, &self.pixel, &self.weight_of, scaled, &mut self.values, m)?;
        for axis in 0..d1 {
            dev.blur(&self.neighbors, axis, &self.values, &mut self.blurred, m)?;
            std::mem::swap(&mut self.values, &mut self.blurred);
        }
        let alpha = self.flat.alpha;
        dev.slice(&self.offset, &self.barycentric, d1, alpha, &self.values, &self.norm, &mut self.msg, n)
    }
}

/// The refined labels of a batch of slices: `labels` holds every slice's pixels in slice order
/// and `kernels[s]` are slice `s`'s smoothness and appearance kernels (their pixel counts add up
/// to `labels.len()`). `params.iterations` mean-field steps, as [`super::refine`] does per slice.
pub(crate) fn mean_field<D: Device>(
    dev: &D,
    labels: &[u8],
    kernels: &[[&Kernel; 2]],
    params: &CrfParams,
) -> Res<Vec<u8>> {
    let n = labels.len();
    if n == 0 || kernels.iter().map(|k| k[0].lattice.n).sum::<usize>() != n {
        return Err(format!(
            "{n} labels for slices of {} pixels",
            kernels.iter().map(|k| k[0].lattice.n).sum::<usize>()
        ));
    }
    if params.iterations == 0 {
        return Ok(labels.to_vec());
    }
    let mut device_kernels = Vec::with_capacity(2);
    for which in 0..2 {
        let per_slice: Vec<&Kernel> = kernels.iter().map(|k| k[which]).collect();
        device_kernels.push(DeviceKernel::upload(dev, flatten(&per_slice)?)?);
    }
    let (p_energy, n_energy) = unary_energies(params);
    let labels_d = dev.upload_u8(labels)?;
    let mut neg_unary = dev.zeros_f32(n * LABELS)?;
    let mut q = dev.zeros_f32(n * LABELS)?;
    let mut scaled = dev.zeros_f32(n * LABELS)?;
    dev.init(&labels_d, p_energy, n_energy, &mut neg_unary, &mut q, n)?;
    for _ in 0..params.iterations {
        for k in device_kernels.iter_mut() {
            k.filter(dev, &q, &mut scaled)?;
        }
        let (a, b) = (&device_kernels[0], &device_kernels[1]);
        dev.update(&neg_unary, &a.msg, a.flat.weight, &b.msg, b.flat.weight, &mut q, n)?;
    }
    let mut out = dev.zeros_u8(n)?;
    dev.argmax(&q, &mut out, n)?;
    dev.download_u8(&out)
}

#[cfg(test)]
mod tests {
    //! `kernels.cu` compiled for the CPU ([`Emulated`]): the flat layout, the gathers and the
    //! loop are checked against the CPU CRF without a GPU.
    use super::*;
    use crate::gpu::emulated::Emulated;
    use crate::gpu::Launch;
    use ndarray::Array2;

    type CF = *const f32;
    type MF = *mut f32;
    type CU = *const u32;

    impl Device for Emulated {
        type F = Vec<f32>;
        type U = Vec<u32>;
        type B = Vec<u8>;
        fn upload_f32(&self, v: &[f32]) -> Res<Vec<f32>> {
            Ok(v.to_vec())
        }
        fn upload_u32(&self, v: &[u32]) -> Res<Vec<u32>> {
            Ok(v.to_vec())
        }
        fn upload_u8(&self, v: &[u8]) -> Res<Vec<u8>> {
            Ok(v.to_vec())
        }
        fn zeros_f32(&self, len: usize) -> Res<Vec<f32>> {
            Ok(vec![0.0; len])
        }
        fn zeros_u8(&self, len: usize) -> Res<Vec<u8>> {
            Ok(vec![0; len])
        }
        fn download_u8(&self, b: &Vec<u8>) -> Res<Vec<u8>> {
            Ok(b.clone())
        }
        fn init(&self, l: &Vec<u8>, pe: f32, ne: f32, nu: &mut Vec<f32>, q: &mut Vec<f32>, n: usize) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(*const u8, f32, f32, MF, MF, i64)>("crf_init");
            let (nu, q) = (nu.as_mut_ptr(), q.as_mut_ptr());
            self.launch(Launch::elements(n), || unsafe { f(l.as_ptr(), pe, ne, nu, q, n as i64) })
        }
        fn scale(&self, q: &Vec<f32>, norm: &Vec<f32>, scaled: &mut Vec<f32>, n: usize) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CF, CF, MF, i64)>("crf_scale");
            let out = scaled.as_mut_ptr();
            self.launch(Launch::elements(n), || unsafe { f(q.as_ptr(), norm.as_ptr(), out, n as i64) })
        }
        fn splat(
            &self,
            start: &Vec<u32>,
            pixel: &Vec<u32>,
            weight: &Vec<f32>,
            scaled: &Vec<f32>,
            values: &mut Vec<f32>,
            m: usize,
        ) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CU, CU, CF, CF, MF, i64)>("crf_splat");
            let out = values.as_mut_ptr();
            self.launch(Launch::elements(m), || unsafe {
                f(start.as_ptr(), pixel.as_ptr(), weight.as_ptr(), scaled.as_ptr(), out, m as i64)
            })
        }
        fn blur(&self, neighbors: &Vec<u32>, axis: usize, values: &Vec<f32>, out: &mut Vec<f32>, m: usize) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CU, i32, CF, MF, i64)>("crf_blur");
            let out = out.as_mut_ptr();
            self.launch(Launch::elements(m), || unsafe {
                f(neighbors.as_ptr(), axis as i32, values.as_ptr(), out, m as i64)
            })
        }
        fn slice(
            &self,
            offset: &Vec<u32>,
            bary: &Vec<f32>,
            d1: usize,
            alpha: f32,
            values: &Vec<f32>,
            norm: &Vec<f32>,
            msg: &mut Vec<f32>,
            n: usize,
        ) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CU, CF, i32, f32, CF, CF, MF, i64)>("crf_slice");
            let out = msg.as_mut_ptr();
            self.launch(Launch::elements(n), || unsafe {
                f(offset.as_ptr(), bary.as_ptr(), d1 as i32, alpha, values.as_ptr(), norm.as_ptr(), out, n as i64)
            })
        }
        fn update(
            &self,
            nu: &Vec<f32>,
            a: &Vec<f32>,
            wa: f32,
            b: &Vec<f32>,
            wb: f32,
            q: &mut Vec<f32>,
            n: usize,
        ) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CF, CF, f32, CF, f32, MF, i64)>("crf_update");
            let out = q.as_mut_ptr();
            self.launch(Launch::elements(n), || unsafe {
                f(nu.as_ptr(), a.as_ptr(), wa, b.as_ptr(), wb, out, n as i64)
            })
        }
        fn argmax(&self, q: &Vec<f32>, out: &mut Vec<u8>, n: usize) -> Res<()> {
            let f = self.kernel::<unsafe extern "C" fn(CF, *mut u8, i64)>("crf_argmax");
            let out = out.as_mut_ptr();
            self.launch(Launch::elements(n), || unsafe { f(q.as_ptr(), out, n as i64) })
        }
    }

    /// A textured slice with a bright disc and a label that leaks past it.
    fn slice(rows: usize, cols: usize, seed: u64) -> (Array2<u8>, Array2<u8>) {
        let mut s = seed;
        let image = Array2::from_shape_fn((rows, cols), |(r, c)| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 12.0;
            let (dr, dc) = (r as f32 - rows as f32 / 2.0, c as f32 - cols as f32 / 3.0);
            let v = if dr * dr + dc * dc < 100.0 { 190.0 } else { 70.0 };
            (v + noise).clamp(0.0, 255.0) as u8
        });
        let labels = Array2::from_shape_fn((rows, cols), |(r, c)| {
            let (dr, dc) = (r as f32 - rows as f32 / 2.0, c as f32 - cols as f32 / 3.0);
            u8::from(dr * dr + dc * dc < 169.0 || (r + 2 * c) % 37 == 0)
        });
        (image, labels)
    }

    type Batch = (Emulated, CrfParams, Vec<(Array2<u8>, Array2<u8>)>, Vec<[Kernel; 2]>);

    fn refs(kernels: &[[Kernel; 2]]) -> Vec<[&Kernel; 2]> {
        kernels.iter().map(|[a, b]| [a, b]).collect()
    }

    /// Both kernels of a slice, each built for it alone.
    fn kernels(image: &Array2<u8>, params: &CrfParams) -> [Kernel; 2] {
        [super::super::smoothness_kernel(image.dim(), params), super::super::appearance_kernel(image.view(), params)]
    }

    /// The emulated device and slices of these shapes
    /// and seeds with their kernels at the default parameters.
    fn batch(shapes: [(usize, usize, u64); 2]) -> Batch {
        let dev = Emulated::build("src/crf/kernels.cu");
        let params = CrfParams::default();
        let slices: Vec<_> = shapes.iter().map(|&(rows, cols, seed)| slice(rows, cols, seed)).collect();
        let kernels = slices.iter().map(|(i, _)| kernels(i, &params)).collect();
        (dev, params, slices, kernels)
    }

    #[test]
    fn emulated_kernels_match_the_cpu_crf() {
        // Two slices of different sizes in one batch: the flat offsets must keep them apart.
        let (dev, params, slices, kernels) = batch([(40, 48, 3), (36, 30, 9)]);
        let labels: Vec<u8> = slices.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        let got = mean_field(&dev, &labels, &refs(&kernels), &params).unwrap();
        let want: Vec<u8> = slices
            .iter()
            .flat_map(|(i, l)| super::super::refine(i.view(), l.view(), &params).unwrap().into_iter())
            .collect();
        assert_eq!(got, want);
        assert_ne!(got, labels, "the CRF changed nothing: a vacuous comparison");
        // Slices of one grid share one smoothness kernel, as pseudo-labelling does.
        let same = [slice(40, 48, 5), slice(40, 48, 6)];
        let shared = super::super::smoothness_kernel((40, 48), &params);
        let appearance: Vec<Kernel> =
            same.iter().map(|(i, _)| super::super::appearance_kernel(i.view(), &params)).collect();
        let pairs: Vec<[&Kernel; 2]> = appearance.iter().map(|a| [&shared, a]).collect();
        let same_labels: Vec<u8> = same.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        let want_same: Vec<u8> = same
            .iter()
            .flat_map(|(i, l)| super::super::refine(i.view(), l.view(), &params).unwrap().into_iter())
            .collect();
        assert_eq!(mean_field(&dev, &same_labels, &pairs, &params).unwrap(), want_same);
        let none = CrfParams { iterations: 0, ..params.clone() };
        assert_eq!(mean_field(&dev, &labels, &refs(&kernels), &none).unwrap(), labels);
        assert!(mean_field(&dev, &labels[1..], &refs(&kernels), &params).is_err());
    }

    #[test]
    fn emulated_filter_is_the_cpu_filter_bit_for_bit() {
        // One message pass of each kernel over a batch of two slices, against `Kernel::filter`
        // per slice: the same sums in the same order give the same floats.
        let (dev, _, slices, kernels) = batch([(24, 20, 4), (18, 26, 8)]);
        let n: usize = slices.iter().map(|(i, _)| i.len()).sum();
        let q: Vec<f32> = (0..n * LABELS).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        for which in 0..2 {
            let per_slice: Vec<&Kernel> = kernels.iter().map(|k| &k[which]).collect();
            let mut k = DeviceKernel::upload(&dev, flatten(&per_slice).unwrap()).unwrap();
            let mut scaled = vec![0f32; n * LABELS];
            k.filter(&dev, &q, &mut scaled).unwrap();
            let mut want = Vec::with_capacity(n * LABELS);
            let mut at = 0;
            for kernel in &per_slice {
                let len = kernel.lattice.n * LABELS;
                let mut msg = vec![0f32; len];
                kernel.filter(&q[at..at + len], &mut msg, &mut super::super::Scratch::default());
                want.extend(msg);
                at += len;
            }
            assert_eq!(k.msg, want, "kernel {which}");
        }
    }

    #[test]
    fn splat_gather_lists_every_pixel_vertex_pair_in_pixel_order() {
        let (image, _) = slice(12, 10, 5);
        let params = CrfParams::default();
        let k = kernels(&image, &params);
        let flat = flatten(&[&k[1], &k[1]]).unwrap();
        let (n, m) = (k[1].lattice.n, k[1].lattice.m);
        assert_eq!((flat.n, flat.m), (2 * n, 2 * m));
        assert_eq!(flat.start[flat.m] as usize, flat.offset.len());
        for v in 0..flat.m {
            let range = flat.start[v] as usize..flat.start[v + 1] as usize;
            assert!(flat.pixel[range.clone()].windows(2).all(|w| w[0] < w[1]));
            for e in range {
                let p = flat.pixel[e] as usize;
                assert!(flat.offset[p * flat.d1..(p + 1) * flat.d1].contains(&(v as u32 + 1)));
            }
        }
        // The second slice's vertices follow the first's.
        assert!(flat.offset[n * flat.d1..].iter().all(|&v| v as usize > m));
    }
}
