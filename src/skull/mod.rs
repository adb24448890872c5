//! The skull, found in the HU volume: which voxels are bone, the skull as one component of them,
//! and the box dilation both users need. Two users share it: the clinical findings (midline and
//! the inner-table flag, [`crate::clinical`]) and the intracranial mask ([`intracranial`]), so
//! "bone" means the same threshold everywhere.

pub mod intracranial;

use crate::alloc::{try_array3, try_map3};
use crate::error::Result;
use crate::lesions::lesion_ids;
use crate::volume::Volume;
use ndarray::{Array3, Axis, Zip};

/// Voxels at or above this many HU are bone (cortical bone is 700 HU and more; blood stays
/// below 100 HU even when clotted).
pub const BONE_HU: f32 = 300.0;

/// Whether a CT value is bone ([`BONE_HU`]).
pub fn is_bone(hu: f32) -> bool {
    hu >= BONE_HU
}

/// The skull: the largest 26-connected component of voxels at or above [`BONE_HU`] (so that
/// calcifications inside the brain do not count), as 0/1 of shape `[nz, ny, nx]`.
pub fn skull(volume: &Volume) -> Result<Array3<u8>> {
    let mut bone = try_map3(volume.data(), "the bone mask", |&hu| u8::from(is_bone(hu)))?;
    let ids = lesion_ids(bone.view());
    for (b, &id) in bone.iter_mut().zip(&ids) {
        *b = u8::from(id == 1);
    }
    Ok(bone)
}

/// Box dilation of a 0/1 mask by `r` voxels along x, y, z (separable, linear in voxels).
pub fn dilate_box(mask: &Array3<u8>, r: [usize; 3]) -> Result<Array3<u8>> {
    let mut cur = mask.clone();
    // axes of the [nz, ny, nx] array: z = 0, y = 1, x = 2
    for (axis, radius) in [(2, r[0]), (1, r[1]), (0, r[2])] {
        if radius == 0 {
            continue;
        }
        let mut next = try_array3(cur.dim(), 0u8, "a dilated mask")?;
        Zip::from(next.lanes_mut(Axis(axis))).and(cur.lanes(Axis(axis))).for_each(|mut out, line| {
            let n = line.len();
            // count of ones in the window [j - radius, j + radius]
            let mut count: usize = line.iter().take(radius.min(n)).map(|&v| usize::from(v != 0)).sum();
            for j in 0..n {
                if j + radius < n {
                    count += usize::from(line[j + radius] != 0);
                }
                if j > radius {
                    count -= usize::from(line[j - radius - 1] != 0);
                }
                out[j] = u8::from(count > 0);
            }
        });
        cur = next;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_matches_brute_force() {
        let mut m = Array3::<u8>::zeros((4, 7, 9));
        m[[1, 3, 4]] = 1;
        m[[3, 0, 8]] = 1;
        let d = dilate_box(&m, [2, 1, 1]).unwrap();
        for ((z, y, x), &v) in d.indexed_iter() {
            let near = m
                .indexed_iter()
                .any(|((zz, yy, xx), &o)| o != 0 && z.abs_diff(zz) <= 1 && y.abs_diff(yy) <= 1 && x.abs_diff(xx) <= 2);
            assert_eq!(v != 0, near, "{z} {y} {x}");
        }
    }

    #[test]
    fn the_skull_is_the_largest_bone_component() {
        let mut hu = Array3::<f32>::from_elem((3, 8, 8), 30.0);
        for x in 0..8 {
            for z in 0..3 {
                hu[[z, 0, x]] = 1200.0; // a plate through every slice
            }
        }
        hu[[1, 5, 5]] = 400.0; // a calcification, apart from it
        let v = Volume::from_array(hu, [1.0, 1.0, 1.0], None).unwrap();
        let s = skull(&v).unwrap();
        assert_eq!(s.iter().filter(|&&b| b != 0).count(), 24);
        assert_eq!(s[[1, 5, 5]], 0);
    }
}
