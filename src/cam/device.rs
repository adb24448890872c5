//! SF-CAM and LayerCAM of a batch of slices on a device that runs `kernels.cu`: the GPU
//! ([`super::cuda`]) or, in the tests, the same kernels compiled for the CPU. These are the
//! twins of [`super::sfcam`] and `normalize_max(layercam)`, followed by the resize to the
//! native grid.
//!
//! PC1's `K x K` covariance is computed on the device and its top eigenvector on the CPU (the
//! same power iteration as the CPU path, a few kilobytes each way), so both paths pick the same
//! direction. The maps come back once, on the native grid.

use crate::gpu::{Launch, Res};

/// Top eigenvectors of `batch` row-major `K x K` covariances, `[batch, K]` flattened.
pub(crate) type Eigenvectors<'a> = dyn Fn(&[f32], usize, usize) -> Vec<f64> + 'a;

/// The side of the covariance kernel's square tiles (`TILE` in kernels.cu).
const TILE: u32 = 16;

/// Where a tap's activations or gradients are, `[batch, k, h, w]` contiguous.
#[derive(Clone, Copy)]
pub(crate) enum TapData<'a> {
    /// On the host: uploaded for the kernels.
    Host(&'a [f32]),
    /// Already on the device at this address, at least `batch * k * h * w` values (on the GPU, a
    /// network output tract-cuda kept there, [`crate::model::gpu::device_f32`]): read in place.
    Device(u64),
}

/// One tap of a batch: the layout of its activations and gradients and what to make of them.
pub(crate) struct TapBatch<'a> {
    pub a: TapData<'a>,
    pub g: TapData<'a>,
    pub batch: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    /// SF-CAM (`true`) or LayerCAM alone.
    pub sf: bool,
    /// SF-CAM's layer-1 amplification with this `lambda`.
    pub amplify: Option<f32>,
    /// The model's input size, where the CAM is formed.
    pub input: (usize, usize),
    /// The volume's slice grid, where the maps are returned.
    pub native: (usize, usize),
}

/// A device with buffers of `f32` and `f64` and the kernels of `kernels.cu`, each launched as
/// told, with the arguments of its signature there (`p` may be absent: a null pointer).
#[allow(clippy::too_many_arguments)]
pub(crate) trait Device {
    type F;
    type D;
    /// A tap's values as the kernels read them: in place, or an upload kept alive with it.
    type Tap;
    /// `data` (`len` values), uploaded when on the host; `what` names it in errors.
    fn tap(&self, data: TapData, len: usize, what: &str) -> Res<Self::Tap>;
    fn zeros_f32(&self, len: usize) -> Res<Self::F>;
    fn zeros_f64(&self, len: usize) -> Res<Self::D>;
    fn upload_f64(&self, v: &[f64]) -> Res<Self::D>;
    /// `b` on the host, once the kernels queued before have finished.
    fn download_f32(&self, b: &Self::F, what: &str) -> Res<Vec<f32>>;
    fn layercam(
        &self,
        cfg: Launch,
        a: &Self::Tap,
        g: &Self::Tap,
        l: &mut Self::F,
        batch: i32,
        k: i32,
        hw: i32,
    ) -> Res<()>;
    fn center(&self, cfg: Launch, a: &Self::Tap, x: &mut Self::F, hw: i32) -> Res<()>;
    fn covariance(&self, cfg: Launch, x: &Self::F, c: &mut Self::F, k: i32, hw: i32) -> Res<()>;
    fn project(&self, cfg: Launch, x: &Self::F, v: &Self::D, p: &mut Self::D, batch: i32, k: i32, hw: i32) -> Res<()>;
    fn image_stats(&self, cfg: Launch, l: &Self::F, p: Option<&Self::D>, stats: &mut Self::D, hw: i32) -> Res<()>;
    fn normalize(
        &self,
        cfg: Launch,
        l: &Self::F,
        p: Option<&Self::D>,
        stats: &Self::D,
        c: &mut Self::F,
        pn: &mut Self::F,
        batch: i32,
        hw: i32,
    ) -> Res<()>;
    /// `dims`: batch, source rows and columns, destination rows and columns.
    fn resize(&self, cfg: Launch, src: &Self::F, dst: &mut Self::F, dims: [i32; 5]) -> Res<()>;
    fn combine(&self, cfg: Launch, c: &mut Self::F, p: &Self::F, n: i64) -> Res<()>;
    fn amplify(&self, cfg: Launch, cam: &mut Self::F, n: i32, lambda: f32) -> Res<()>;
}

/// The maps of `t` on the native grid, `[batch, rows, cols]` flattened; `eigenvectors` finds
/// PC1's directions from the `K x K` covariances (the CPU path's own routine).
pub(crate) fn tap_maps<D: Device>(dev: &D, t: &TapBatch, eigenvectors: &Eigenvectors) -> Res<Vec<f32>> {
    let (b, k, hw) = (t.batch, t.k, t.h * t.w);
    let (rows, cols) = t.input;
    let (ny, nx) = t.native;
    if b == 0 || hw == 0 || k == 0 || rows * cols == 0 || ny * nx == 0 {
        return Err(format!("an empty tap batch [{b}, {k}, {}, {}] or map size", t.h, t.w));
    }
    for (data, what) in [(t.a, "activations"), (t.g, "gradients")] {
        if let TapData::Host(values) = data {
            if values.len() != b * k * hw {
                return Err(format!("{what}: {} values where the tap has {}", values.len(), b * k * hw));
            }
        }
    }
    let (bi, ki, hwi) = (b as i32, k as i32, hw as i32);
    let a = dev.tap(t.a, b * k * hw, "activations")?;
    let g = dev.tap(t.g, b * k * hw, "gradients")?;
    let mut l = dev.zeros_f32(b * hw)?;
    dev.layercam(Launch::elements(b * hw), &a, &g, &mut l, bi, ki, hwi)?;
    let p = if t.sf {
        let mut x = dev.zeros_f32(b * k * hw)?;
        dev.center(Launch::per_block(b * k), &a, &mut x, hwi)?;
        let mut cov = dev.zeros_f32(b * k * k)?;
        dev.covariance(Launch::tiles(k, TILE, b), &x, &mut cov, ki, hwi)?;
        let v = eigenvectors(&dev.download_f32(&cov, "covariance")?, b, k);
        let v = dev.upload_f64(&v)?;
        let mut p = dev.zeros_f64(b * hw)?;
        dev.project(Launch::elements(b * hw), &x, &v, &mut p, bi, ki, hwi)?;
        Some(p)
    } else {
        None
    };
    let mut stats = dev.zeros_f64(b * 4)?;
    dev.image_stats(Launch::per_block(b), &l, p.as_ref(), &mut stats, hwi)?;
    // `pn`, PC1's normalised map, is only written for SF-CAM.
    let (mut c, mut pn) = (dev.zeros_f32(b * hw)?, dev.zeros_f32(if t.sf { b * hw } else { 1 })?);
    dev.normalize(Launch::elements(b * hw), &l, p.as_ref(), &stats, &mut c, &mut pn, bi, hwi)?;
    let resize = |src: &D::F, (sh, sw): (usize, usize), (dh, dw): (usize, usize)| -> Res<D::F> {
        let mut dst = dev.zeros_f32(b * dh * dw)?;
        dev.resize(Launch::elements(b * dh * dw), src, &mut dst, [bi, sh as i32, sw as i32, dh as i32, dw as i32])?;
        Ok(dst)
    };
    let mut cam = resize(&c, (t.h, t.w), (rows, cols))?;
    if t.sf {
        let p_in = resize(&pn, (t.h, t.w), (rows, cols))?;
        dev.combine(Launch::elements(b * rows * cols), &mut cam, &p_in, (b * rows * cols) as i64)?;
    }
    if let Some(lambda) = t.amplify {
        dev.amplify(Launch::per_block(b), &mut cam, (rows * cols) as i32, lambda)?;
    }
    dev.download_f32(&resize(&cam, (rows, cols), (ny, nx))?, "maps")
}

#[cfg(test)]
mod tests {
    //! `kernels.cu` compiled for the CPU ([`Emulated`]) and driven by [`tap_maps`], against the
    //! CPU CAMs resized to the native grid, without a GPU.
    use super::*;
    use crate::cam::{layercam, normalize_max, sfcam, top_eigenvector};
    use crate::gpu::emulated::Emulated;
    use crate::preprocess::resize_bilinear;
    use ndarray::{s, Array4};
    use std::cell::Cell;

    type CF = *const f32;
    type MF = *mut f32;
    type CD = *const f64;
    type MD = *mut f64;

    /// The emulated device, counting the taps it had to upload.
    struct Cam {
        dev: Emulated,
        uploads: Cell<usize>,
    }

    /// A tap's address and, when it came from the host, the copy that holds it.
    struct Tap {
        address: usize,
        _upload: Option<Vec<f32>>,
    }

    /// Addresses (plain numbers, so the emulator's threads may share them) of host buffers.
    fn at<T>(v: &[T]) -> usize {
        v.as_ptr() as usize
    }
    fn at_mut<T>(v: &mut [T]) -> usize {
        v.as_mut_ptr() as usize
    }
    fn maybe(p: Option<&Vec<f64>>) -> usize {
        p.map_or(0, |p| at(p))
    }

    impl Device for Cam {
        type F = Vec<f32>;
        type D = Vec<f64>;
        type Tap = Tap;
        fn tap(&self, data: TapData, len: usize, _: &str) -> Res<Tap> {
            Ok(match data {
                TapData::Device(address) => Tap { address: address as usize, _upload: None },
                TapData::Host(values) => {
                    self.uploads.set(self.uploads.get() + 1);
                    let up = values[..len].to_vec();
                    Tap { address: at(&up), _upload: Some(up) }
                }
            })
        }
        fn zeros_f32(&self, len: usize) -> Res<Vec<f32>> {
            Ok(vec![0.0; len])
        }
        fn zeros_f64(&self, len: usize) -> Res<Vec<f64>> {
            Ok(vec![0.0; len])
        }
        fn upload_f64(&self, v: &[f64]) -> Res<Vec<f64>> {
            Ok(v.to_vec())
        }
        fn download_f32(&self, b: &Vec<f32>, _: &str) -> Res<Vec<f32>> {
            Ok(b.clone())
        }
        fn layercam(&self, cfg: Launch, a: &Tap, g: &Tap, l: &mut Vec<f32>, batch: i32, k: i32, hw: i32) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, CF, MF, i32, i32, i32)>("layercam");
            let (a, g, l) = (a.address, g.address, at_mut(l));
            self.dev.launch(cfg, || unsafe { f(a as CF, g as CF, l as MF, batch, k, hw) })
        }
        fn center(&self, cfg: Launch, a: &Tap, x: &mut Vec<f32>, hw: i32) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, MF, i32)>("center");
            let (a, x) = (a.address, at_mut(x));
            self.dev.launch_synced(cfg, || unsafe { f(a as CF, x as MF, hw) })
        }
        fn covariance(&self, cfg: Launch, x: &Vec<f32>, c: &mut Vec<f32>, k: i32, hw: i32) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, MF, i32, i32)>("covariance");
            let (x, c) = (at(x), at_mut(c));
            self.dev.launch_synced(cfg, || unsafe { f(x as CF, c as MF, k, hw) })
        }
        fn project(
            &self,
            cfg: Launch,
            x: &Vec<f32>,
            v: &Vec<f64>,
            p: &mut Vec<f64>,
            batch: i32,
            k: i32,
            hw: i32,
        ) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, CD, MD, i32, i32, i32)>("project");
            let (x, v, p) = (at(x), at(v), at_mut(p));
            self.dev.launch(cfg, || unsafe { f(x as CF, v as CD, p as MD, batch, k, hw) })
        }
        fn image_stats(&self, cfg: Launch, l: &Vec<f32>, p: Option<&Vec<f64>>, st: &mut Vec<f64>, hw: i32) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, CD, MD, i32)>("image_stats");
            let (l, p, st) = (at(l), maybe(p), at_mut(st));
            self.dev.launch_synced(cfg, || unsafe { f(l as CF, p as CD, st as MD, hw) })
        }
        fn normalize(
            &self,
            cfg: Launch,
            l: &Vec<f32>,
            p: Option<&Vec<f64>>,
            st: &Vec<f64>,
            c: &mut Vec<f32>,
            pn: &mut Vec<f32>,
            batch: i32,
            hw: i32,
        ) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, CD, CD, MF, MF, i32, i32)>("normalize");
            let (l, p, st, c, pn) = (at(l), maybe(p), at(st), at_mut(c), at_mut(pn));
            self.dev.launch(cfg, || unsafe { f(l as CF, p as CD, st as CD, c as MF, pn as MF, batch, hw) })
        }
        fn resize(&self, cfg: Launch, src: &Vec<f32>, dst: &mut Vec<f32>, d: [i32; 5]) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(CF, MF, i32, i32, i32, i32, i32)>("resize");
            let (src, dst) = (at(src), at_mut(dst));
            self.dev.launch(cfg, || unsafe { f(src as CF, dst as MF, d[0], d[1], d[2], d[3], d[4]) })
        }
        fn combine(&self, cfg: Launch, c: &mut Vec<f32>, p: &Vec<f32>, n: i64) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(MF, CF, i64)>("combine");
            let (c, p) = (at_mut(c), at(p));
            self.dev.launch(cfg, || unsafe { f(c as MF, p as CF, n) })
        }
        fn amplify(&self, cfg: Launch, cam: &mut Vec<f32>, n: i32, lambda: f32) -> Res<()> {
            let f = *self.dev.kernel::<unsafe extern "C" fn(MF, i32, f32)>("amplify");
            let cam = at_mut(cam);
            self.dev.launch_synced(cfg, || unsafe { f(cam as MF, n, lambda) })
        }
    }

    fn device() -> Cam {
        Cam { dev: Emulated::build("src/cam/kernels.cu"), uploads: Cell::new(0) }
    }

    /// Activations with one dominant channel direction (so PC1 is well defined) plus noise, and
    /// gradients of both signs: `[batch, k, h, w]`.
    fn tap(batch: usize, k: usize, h: usize, w: usize, seed: u64) -> (Array4<f32>, Array4<f32>) {
        let mut state = seed;
        let mut noise = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let a = Array4::from_shape_fn((batch, k, h, w), |(b, c, y, x)| {
            let blob = (-((y as f32 - h as f32 / 3.0).powi(2) + (x as f32 - w as f32 / (2.0 + b as f32)).powi(2))
                / 20.0)
                .exp();
            (1.0 + c as f32 / k as f32) * blob * 3.0 + noise()
        });
        let g = Array4::from_shape_fn((batch, k, h, w), |_| noise() + 0.1);
        (a, g)
    }

    fn eigenvectors(cov: &[f32], b: usize, k: usize) -> Vec<f64> {
        (0..b)
            .flat_map(|j| {
                let m: Vec<f64> = cov[j * k * k..(j + 1) * k * k].iter().map(|&v| v as f64).collect();
                top_eigenvector(&m, k)
            })
            .collect()
    }

    /// The CPU path's maps of every image, resized to `native`, flattened.
    fn cpu_maps(a: &Array4<f32>, g: &Array4<f32>, t: &TapBatch) -> Vec<f32> {
        let (rows, cols) = t.input;
        (0..t.batch)
            .flat_map(|b| {
                let (ab, gb) = (a.slice(s![b, .., .., ..]), g.slice(s![b, .., .., ..]));
                let cam = if t.sf {
                    sfcam(ab, gb, rows, cols, t.amplify.is_some(), t.amplify.unwrap_or(0.0)).unwrap()
                } else {
                    resize_bilinear(normalize_max(layercam(ab, gb).unwrap().view()).view(), rows, cols)
                };
                resize_bilinear(cam.view(), t.native.0, t.native.1).into_iter()
            })
            .collect()
    }

    fn relative_l2(got: &[f32], want: &[f32]) -> f64 {
        let diff: f64 = got.iter().zip(want).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum();
        let norm: f64 = want.iter().map(|&y| (y as f64).powi(2)).sum();
        (diff / norm).sqrt()
    }

    #[test]
    fn emulated_kernels_match_the_cpu_cams() {
        // 20 channels: covariance tiles that overhang K; 18x17 = 306 pixels: more than a block,
        // so the strided loops and reductions take every path.
        let dev = device();
        let (a, g) = tap(2, 20, 18, 17, 7);
        let (av, gv) = (a.as_slice().unwrap(), g.as_slice().unwrap());
        for (sf, amplify) in [(true, Some(2.0)), (true, None), (false, None)] {
            let t = TapBatch {
                a: TapData::Host(av),
                g: TapData::Host(gv),
                batch: 2,
                k: 20,
                h: 18,
                w: 17,
                sf,
                amplify,
                input: (30, 34),
                native: (40, 28),
            };
            let got = tap_maps(&dev, &t, &eigenvectors).unwrap();
            let want = cpu_maps(&a, &g, &t);
            assert_eq!(got.len(), want.len());
            // The sums run in another order (a block's tree, the covariance's tiles): about 4e-9.
            let err = relative_l2(&got, &want);
            assert!(err < 1e-6, "sf {sf}, amplify {amplify:?}: relative L2 {err}");
            let (first, second) = got.split_at(40 * 28);
            assert!(first.iter().any(|&v| v > 0.5) && first != second, "vacuous maps");
        }
        assert_eq!(dev.uploads.get(), 6, "two uploads per host tap");
    }

    #[test]
    fn device_taps_are_read_in_place() {
        let dev = device();
        let (a, g) = tap(1, 5, 9, 9, 3);
        let (av, gv) = (a.as_slice().unwrap(), g.as_slice().unwrap());
        let batch = |a, g| TapBatch {
            a,
            g,
            batch: 1,
            k: 5,
            h: 9,
            w: 9,
            sf: true,
            amplify: Some(2.0),
            input: (16, 16),
            native: (20, 24),
        };
        let host = tap_maps(&dev, &batch(TapData::Host(av), TapData::Host(gv)), &eigenvectors).unwrap();
        assert_eq!(dev.uploads.get(), 2);
        let in_place = batch(TapData::Device(av.as_ptr() as u64), TapData::Device(gv.as_ptr() as u64));
        assert_eq!(tap_maps(&dev, &in_place, &eigenvectors).unwrap(), host);
        assert_eq!(dev.uploads.get(), 2, "a device tap was uploaded");
    }

    #[test]
    fn bad_batches_are_errors() {
        let dev = device();
        let (a, g) = tap(1, 4, 6, 6, 1);
        let (av, gv) = (a.as_slice().unwrap(), g.as_slice().unwrap());
        let mut t = TapBatch {
            a: TapData::Host(&av[1..]),
            g: TapData::Host(gv),
            batch: 1,
            k: 4,
            h: 6,
            w: 6,
            sf: true,
            amplify: None,
            input: (8, 8),
            native: (8, 8),
        };
        let err = tap_maps(&dev, &t, &eigenvectors).unwrap_err();
        assert!(err.contains("activations: 143 values where the tap has 144"), "{err}");
        t.a = TapData::Host(av);
        t.batch = 0;
        assert!(tap_maps(&dev, &t, &eigenvectors).unwrap_err().contains("empty"));
        t.batch = 1;
        t.native = (0, 8);
        assert!(tap_maps(&dev, &t, &eigenvectors).unwrap_err().contains("empty"));
        assert_eq!(dev.uploads.get(), 0, "nothing is uploaded for a bad batch");
    }
}
