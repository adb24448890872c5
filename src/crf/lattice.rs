//! The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) as pydensecrf builds and
//! filters it: Gaussian filtering of values attached to points in `d` dimensions, in time
//! linear in the number of points. Built once per slice and kernel; filtered every mean-field
//! iteration (here, or by the GPU kernels from its arrays).

/// Reusable buffers for [`Lattice::compute`].
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) input: Vec<f32>,
    pub(crate) values: Vec<f32>,
    pub(crate) new_values: Vec<f32>,
}

/// Permutohedral lattice over `n` points in `d` dimensions. Vertex indices are shifted by one:
/// index 0 is a dummy, always-zero vertex standing for "no neighbour".
pub(crate) struct Lattice {
    pub(crate) d: usize,
    pub(crate) n: usize,
    /// Number of lattice vertices (excluding the dummy).
    pub(crate) m: usize,
    /// Per point, the `d + 1` enclosing simplex vertices (1-based).
    pub(crate) offset: Vec<u32>,
    /// Per point, the barycentric weights of those vertices.
    pub(crate) barycentric: Vec<f32>,
    /// Per axis `j` and vertex `i` (0-based), the two neighbours along that axis (1-based, 0 =
    /// none), at `(j * m + i) * 2`.
    pub(crate) neighbors: Vec<u32>,
}

impl Lattice {
    pub(crate) fn new(features: &[f32], d: usize) -> Lattice {
        debug_assert!(d >= 1 && features.len().is_multiple_of(d));
        let n = features.len() / d;
        let d1 = d + 1;
        let mut table = HashTable::new(d, n);
        let mut offset = vec![0u32; n * d1];
        let mut bary_out = vec![0f32; n * d1];

        // Canonical simplex.
        let mut canonical = vec![0i32; d1 * d1];
        for i in 0..=d {
            for j in 0..=d - i {
                canonical[i * d1 + j] = i as i32;
            }
            for j in d - i + 1..=d {
                canonical[i * d1 + j] = i as i32 - d1 as i32;
            }
        }
        // Diagonal of E (Adams et al. 2010 p. 5), scaled to the filter's standard deviation.
        let inv_std_dev = ((2.0f64 / 3.0).sqrt() * d1 as f64) as f32;
        let scale: Vec<f32> =
            (0..d).map(|i| (1.0 / (((i + 2) * (i + 1)) as f64).sqrt() * inv_std_dev as f64) as f32).collect();
        let inv_d1 = 1.0f32 / d1 as f32;
        let d1f = d1 as f32;

        let mut elevated = vec![0f32; d1];
        let mut rem0 = vec![0f32; d1];
        let mut rank = vec![0f32; d1];
        let mut bary = vec![0f32; d + 2];
        let mut key = vec![0i32; d];
        for (k, f) in features.chunks_exact(d).enumerate() {
            // Elevate the feature onto the hyperplane.
            let mut sm = 0f32;
            for j in (1..=d).rev() {
                let cf = f[j - 1] * scale[j - 1];
                elevated[j] = sm - j as f32 * cf;
                sm += cf;
            }
            elevated[0] = sm;
            // Closest remainder-0 point, rounding half to even as the SSE code does.
            let mut sum = 0f32;
            for i in 0..=d {
                let v = (inv_d1 * elevated[i]).round_ties_even();
                rem0[i] = v * d1f;
                sum += v;
            }
            // Rank of each coordinate's differential.
            rank.iter_mut().for_each(|r| *r = 0.0);
            for i in 0..d {
                let di = elevated[i] - rem0[i];
                for j in i + 1..=d {
                    let dj = elevated[j] - rem0[j];
                    let c = if di < dj { 1.0 } else { 0.0 };
                    rank[i] += c;
                    rank[j] += 1.0 - c;
                }
            }
            // Bring the point back onto the plane if the rounding moved it off.
            for i in 0..=d {
                rank[i] += sum;
                let add = if rank[i] < 0.0 { d1f } else { 0.0 };
                let sub = if rank[i] >= d1f { d1f } else { 0.0 };
                rank[i] += add - sub;
                rem0[i] += add - sub;
            }
            // Barycentric coordinates (p. 10).
            bary.iter_mut().for_each(|b| *b = 0.0);
            for i in 0..=d {
                let v = (elevated[i] - rem0[i]) * inv_d1;
                let p = d - rank[i] as usize;
                bary[p] += v;
                bary[p + 1] -= v;
            }
            bary[0] += 1.0 + bary[d + 1];
            // Vertices of the enclosing simplex.
            for remainder in 0..=d {
                for i in 0..d {
                    key[i] = rem0[i] as i32 + canonical[remainder * d1 + rank[i] as usize];
                }
                offset[k * d1 + remainder] = table.find_or_insert(&key) + 1;
                bary_out[k * d1 + remainder] = bary[remainder];
            }
        }

        // Neighbours of every vertex along each lattice axis.
        let m = table.len();
        let mut neighbors = vec![0u32; d1 * m * 2];
        let mut n1 = vec![0i32; d];
        let mut n2 = vec![0i32; d];
        for j in 0..=d {
            for i in 0..m {
                let key = table.key(i);
                for k in 0..d {
                    n1[k] = key[k] - 1;
                    n2[k] = key[k] + 1;
                }
                if j < d {
                    n1[j] = key[j] + d as i32;
                    n2[j] = key[j] - d as i32;
                }
                let at = (j * m + i) * 2;
                neighbors[at] = table.find(&n1).map_or(0, |v| v + 1);
                neighbors[at + 1] = table.find(&n2).map_or(0, |v| v + 1);
            }
        }
        Lattice { d, n, m, offset, barycentric: bary_out, neighbors }
    }

    /// The slicing constant `1 / (1 + 2^-d)` of pydensecrf.
    pub(crate) fn alpha(&self) -> f32 {
        1.0f32 / (1.0 + 2f32.powi(-(self.d as i32)))
    }

    /// Splat `input` (`vs` values per point), blur along every lattice axis, slice into `out`.
    pub(crate) fn compute(&self, input: &[f32], vs: usize, out: &mut [f32], scratch: &mut Scratch) {
        let (d1, m) = (self.d + 1, self.m);
        debug_assert_eq!(input.len(), self.n * vs);
        debug_assert_eq!(out.len(), self.n * vs);
        let values = &mut scratch.values;
        let new_values = &mut scratch.new_values;
        values.clear();
        values.resize((m + 1) * vs, 0.0);
        new_values.clear();
        new_values.resize((m + 1) * vs, 0.0);

        // Splat.
        for (i, val) in input.chunks_exact(vs).enumerate() {
            for j in 0..d1 {
                let o = self.offset[i * d1 + j] as usize;
                let w = self.barycentric[i * d1 + j];
                let dst = &mut values[o * vs..(o + 1) * vs];
                for (t, &v) in dst.iter_mut().zip(val) {
                    *t += w * v;
                }
            }
        }
        // Blur with [1/2, 1, 1/2] along each axis in turn.
        for j in 0..d1 {
            for i in 0..m {
                let at = (j * m + i) * 2;
                let n1 = self.neighbors[at] as usize;
                let n2 = self.neighbors[at + 1] as usize;
                let o = (i + 1) * vs;
                for k in 0..vs {
                    new_values[o + k] = values[o + k] + 0.5 * (values[n1 * vs + k] + values[n2 * vs + k]);
                }
            }
            std::mem::swap(values, new_values);
        }
        // Slice.
        let alpha = self.alpha();
        for (i, dst) in out.chunks_exact_mut(vs).enumerate() {
            dst.iter_mut().for_each(|t| *t = 0.0);
            for j in 0..d1 {
                let o = self.offset[i * d1 + j] as usize;
                let w = self.barycentric[i * d1 + j] * alpha;
                for (t, &v) in dst.iter_mut().zip(&values[o * vs..(o + 1) * vs]) {
                    *t += w * v;
                }
            }
        }
    }
}

/// Open-addressing hash table from lattice keys (`d` integers) to dense vertex indices.
struct HashTable {
    d: usize,
    keys: Vec<i32>,
    /// Slot -> vertex index, `u32::MAX` when empty; length a power of two.
    slots: Vec<u32>,
}

impl HashTable {
    fn new(d: usize, points: usize) -> HashTable {
        let cap = (points.max(8) * 2).next_power_of_two();
        HashTable { d, keys: Vec::with_capacity(points * d), slots: vec![u32::MAX; cap] }
    }

    fn len(&self) -> usize {
        self.keys.len() / self.d
    }

    fn key(&self, i: usize) -> &[i32] {
        &self.keys[i * self.d..(i + 1) * self.d]
    }

    fn hash(key: &[i32]) -> usize {
        let mut h = 0u64;
        for &k in key {
            h = h.wrapping_add(k as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        (h ^ (h >> 29)) as usize
    }

    fn slot_of(&self, key: &[i32]) -> (usize, Option<u32>) {
        let mask = self.slots.len() - 1;
        let mut s = Self::hash(key) & mask;
        loop {
            let v = self.slots[s];
            if v == u32::MAX {
                return (s, None);
            }
            if self.key(v as usize) == key {
                return (s, Some(v));
            }
            s = (s + 1) & mask;
        }
    }

    fn find(&self, key: &[i32]) -> Option<u32> {
        self.slot_of(key).1
    }

    fn find_or_insert(&mut self, key: &[i32]) -> u32 {
        let (s, found) = self.slot_of(key);
        if let Some(v) = found {
            return v;
        }
        let v = self.len() as u32;
        self.keys.extend_from_slice(key);
        self.slots[s] = v;
        if self.len() * 2 > self.slots.len() {
            self.grow();
        }
        v
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        self.slots = vec![u32::MAX; cap];
        let mask = cap - 1;
        for v in 0..self.len() {
            let mut s = Self::hash(self.key(v)) & mask;
            while self.slots[s] != u32::MAX {
                s = (s + 1) & mask;
            }
            self.slots[s] = v as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lattice_normaliser_is_smooth_and_positive() {
        // L(1) of a regular grid should be roughly constant away from the borders.
        let feats: Vec<f32> = (0..30 * 30).flat_map(|i| [(i % 30) as f32 / 3.0, (i / 30) as f32 / 3.0]).collect();
        let lat = Lattice::new(&feats, 2);
        let mut out = vec![0f32; 900];
        lat.compute(&vec![1.0; 900], 1, &mut out, &mut Scratch::default());
        assert!(out.iter().all(|&v| v > 0.0));
        let centre = out[15 * 30 + 15];
        assert!((out[14 * 30 + 16] / centre - 1.0).abs() < 0.2);
    }
}
