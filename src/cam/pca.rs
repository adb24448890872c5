//! First principal component projection of tap activations (EigenCAM's projection).

use crate::{Error, Result};
use ndarray::{Array2, ArrayView2, ArrayView3};

/// PC1 map of `a` (`[K, h, w]`), oriented by `orient_with` (`[h, w]`, the LayerCAM map) and
/// min-max normalised to `[0, 1]`.
///
/// Pixels are `h*w` samples of `K` features. Each channel is centred by its spatial mean,
/// `v` is the eigenvector of the largest eigenvalue of `X^T X` (f32 product, power iteration in f64; see
/// `top_eigenvector`), `p = X v`. If `sum p * (o - mean o) < 0` the sign of `p` is
/// flipped. Finally `(p - min p) / (max p - min p)`, or zeros when `p` is constant (e.g. all
/// constant channels). `K = 1` gives the normalised centred channel, oriented.
///
/// Errors if `a` is empty or `orient_with` is not `[h, w]`.
pub fn pc1(a: ArrayView3<f32>, orient_with: ArrayView2<f32>) -> Result<Array2<f32>> {
    let (kk, h, w) = a.dim();
    if a.is_empty() {
        return Err(Error::arg(format!("pc1: empty activations {:?}", a.dim())));
    }
    if orient_with.dim() != (h, w) {
        return Err(Error::arg(format!(
            "pc1: orientation map {:?} does not match activations {:?}",
            orient_with.dim(),
            a.dim()
        )));
    }
    let n = h * w;
    // Centred channels as f32 [K, n] (means in f64). The covariance X X^T (up to the 1/n
    // factor, which leaves eigenvectors unchanged) through a blocked, vectorised product: as a
    // scalar f64 loop it dominated a CAM's time. The eigenvector is then found in f64.
    let mut x = Array2::<f32>::zeros((kk, n));
    for (mut row, ak) in x.outer_iter_mut().zip(a.outer_iter()) {
        let mean = (ak.iter().map(|&v| v as f64).sum::<f64>() / n as f64) as f32;
        row.iter_mut().zip(ak.iter()).for_each(|(dst, &v)| *dst = v - mean);
    }
    let cov: Vec<f64> = x.dot(&x.t()).iter().map(|&v| v as f64).collect();
    let v = top_eigenvector(&cov, kk);
    let mut p = vec![0.0f64; n];
    for (&vk, xk) in v.iter().zip(x.outer_iter()) {
        for (pi, &xi) in p.iter_mut().zip(xk.iter()) {
            *pi += vk * xi as f64;
        }
    }
    let omean = orient_with.iter().map(|&o| o as f64).sum::<f64>() / n as f64;
    let dot: f64 = p.iter().zip(orient_with.iter()).map(|(&pi, &o)| pi * (o as f64 - omean)).sum();
    let sign = if dot < 0.0 { -1.0 } else { 1.0 };
    let (lo, hi) = p.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        let v = sign * v;
        (lo.min(v), hi.max(v))
    });
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return Ok(Array2::zeros((h, w)));
    }
    let out: Vec<f32> = p.iter().map(|&v| ((sign * v - lo) / range) as f32).collect();
    Ok(Array2::from_shape_vec((h, w), out).expect("h*w samples"))
}

/// Unit eigenvector of the largest eigenvalue of the symmetric positive semi-definite `k x k`
/// matrix `m` (row-major), by power iteration started from its largest column (the lowest index
/// among equals), so a diagonal matrix gives its largest diagonal entry's axis.
///
/// Each step costs `k^2`, against `k^3` per sweep for the Jacobi rotations this replaced
/// (ResNet50's 512-channel layer2 took seconds per slice); it stops when the residual
/// `|m v - lambda v|` falls below `1e-10 lambda`, or after 5000 steps, which only nearly equal
/// top eigenvalues need: their eigenvectors are equally valid principal directions.
pub(crate) fn top_eigenvector(m: &[f64], k: usize) -> Vec<f64> {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let start =
        (0..k)
            .map(|j| (j, norm(&m[j * k..(j + 1) * k])))
            .fold((0, -1.0), |best, (j, n)| if n > best.1 { (j, n) } else { best });
    let mut v = m[start.0 * k..(start.0 + 1) * k].to_vec();
    let n0 = norm(&v);
    if n0 == 0.0 {
        let mut e = vec![0.0; k];
        e[0] = 1.0;
        return e;
    }
    v.iter_mut().for_each(|x| *x /= n0);
    let mut w = vec![0.0f64; k];
    for _ in 0..5000 {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = m[i * k..(i + 1) * k].iter().zip(&v).map(|(a, b)| a * b).sum();
        }
        let lambda: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
        let residual = norm(&w.iter().zip(&v).map(|(a, b)| a - lambda * b).collect::<Vec<_>>());
        let nw = norm(&w);
        if nw == 0.0 {
            break;
        }
        v.iter_mut().zip(&w).for_each(|(vi, wi)| *vi = wi / nw);
        if residual <= 1e-10 * lambda.abs() {
            break;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    #[test]
    fn known_principal_direction() {
        // Channels: s * (3, 4, 0) / 5 for a varying scalar s, plus a small orthogonal wobble
        // on channel 2 and offsets; PC1 must recover s (up to an affine map). The wobble is not
        // exactly uncorrelated with s, so PC1 tilts by O(1e-4) from (0.6, 0.8, 0).
        let (h, w) = (5, 6);
        let s = Array2::from_shape_fn((h, w), |(y, x)| (y as f32 * 1.7 - x as f32 * 0.9).sin() * 3.0);
        let wob = Array2::from_shape_fn((h, w), |(y, x)| 0.05 * ((y * 7 + x * 3) % 5) as f32);
        let a = Array3::from_shape_fn((3, h, w), |(k, y, x)| match k {
            0 => 0.6 * s[[y, x]] + 10.0,
            1 => 0.8 * s[[y, x]] - 2.0,
            _ => wob[[y, x]] + 1.0,
        });
        let (lo, hi) = s.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let expect = s.mapv(|v| (v - lo) / (hi - lo));
        let p = pc1(a.view(), s.view()).unwrap();
        let err = (&p - &expect).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(err < 1e-3, "err {err}");
        // orientation follows the reference map
        let q = pc1(a.view(), s.mapv(|v| -v).view()).unwrap();
        let err = (&q - &expect.mapv(|v| 1.0 - v)).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(err < 1e-3, "err {err}");
    }

    #[test]
    fn k1_and_constant() {
        let a = Array3::from_shape_fn((1, 2, 2), |(_, y, x)| (y * 2 + x) as f32);
        let o = Array2::from_shape_fn((2, 2), |(y, x)| (y * 2 + x) as f32);
        let p = pc1(a.view(), o.view()).unwrap();
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        let c = Array3::from_elem((4, 3, 3), 2.5f32);
        assert!(pc1(c.view(), Array2::zeros((3, 3)).view()).unwrap().iter().all(|&v| v == 0.0));
        let z = Array3::<f32>::zeros((1, 1, 1));
        assert_eq!(pc1(z.view(), Array2::zeros((1, 1)).view()).unwrap()[[0, 0]], 0.0);
    }

    #[test]
    fn power_iteration_top_eigenvector() {
        // [[2, 1], [1, 2]] -> eigenvalues 3 (1, 1)/sqrt2 and 1
        let v = top_eigenvector(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((v[0].abs() - 0.5f64.sqrt()).abs() < 1e-9 && (v[0] - v[1]).abs() < 1e-9, "{v:?}");
        // diagonal: the largest diagonal entry's axis; ties: the lowest index
        assert_eq!(top_eigenvector(&[1.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 2.0], 3), vec![0.0, 1.0, 0.0]);
        assert_eq!(top_eigenvector(&[3.0, 0.0, 0.0, 3.0], 2), vec![1.0, 0.0]);
        // a 40x40 covariance with a known top direction u: m = 5 u u^T + diag(0.1 .. 1)
        let k = 40;
        let u: Vec<f64> = (0..k).map(|i| ((i * 7 % 11) as f64 - 5.0) / 10.0).collect();
        let nu = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        let m: Vec<f64> = (0..k * k)
            .map(|ij| {
                let (i, j) = (ij / k, ij % k);
                5.0 * u[i] * u[j] / (nu * nu) + if i == j { 0.1 + 0.9 * i as f64 / k as f64 } else { 0.0 }
            })
            .collect();
        let v = top_eigenvector(&m, k);
        // the true top eigenvector is close to u (perturbed by the diagonal): check the
        // eigen-equation instead
        let w: Vec<f64> = (0..k).map(|i| (0..k).map(|j| m[i * k + j] * v[j]).sum()).collect();
        let lambda: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
        let res = w.iter().zip(&v).map(|(a, b)| (a - lambda * b).powi(2)).sum::<f64>().sqrt();
        assert!(res < 1e-8 * lambda && lambda > 5.0, "residual {res}, lambda {lambda}");
    }
}
