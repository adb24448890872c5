//! Clinical findings on synthetic volumes with known answers: ellipsoids of known axes (ABC/2
//! and the voxel volume), and bleeds on a known side of a turned, tilted, shifted head phantom.

use ichseg::clinical::{Findings, Side};
use ichseg::lesions::find_lesions;
use ichseg::Volume;
use ndarray::Array3;

const PI: f64 = std::f64::consts::PI;

/// A bleed in the head's own frame: u towards the patient's right, v anterior, w superior.
struct Bleed {
    centre: [f64; 3],
    semi: [f64; 3],
    /// Added to 50 HU by voxel index, so that mean, median and max differ.
    hu_step: f32,
}

struct Head {
    yaw_deg: f64,
    roll_deg: f64,
    /// Head centre in world mm; the grid's centre is the world origin.
    shift: [f64; 3],
    /// Skull present only where world x < this (a head cut by the field of view).
    cut_x: f64,
}

/// Rotation taking head-frame vectors to world: Rz(yaw) Ry(-roll), so that the head's
/// left-right axis is the normal midline::normal(yaw, roll) would find.
fn rotation(yaw_deg: f64, roll_deg: f64) -> [[f64; 3]; 3] {
    let (y, r) = (yaw_deg.to_radians(), roll_deg.to_radians());
    let rz = [[y.cos(), -y.sin(), 0.0], [y.sin(), y.cos(), 0.0], [0.0, 0.0, 1.0]];
    let ry = [[r.cos(), 0.0, r.sin()], [0.0, 1.0, 0.0], [-r.sin(), 0.0, r.cos()]];
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| rz[i][k] * ry[k][j]).sum();
        }
    }
    m
}

fn grid_affine(dims: [usize; 3], spacing: [f64; 3]) -> [[f64; 4]; 4] {
    let t: Vec<f64> = (0..3).map(|a| -((dims[a] - 1) as f64) / 2.0 * spacing[a]).collect();
    [[spacing[0], 0.0, 0.0, t[0]], [0.0, spacing[1], 0.0, t[1]], [0.0, 0.0, spacing[2], t[2]], [0.0, 0.0, 0.0, 1.0]]
}

fn inside(q: [f64; 3], c: [f64; 3], semi: [f64; 3]) -> f64 {
    (0..3).map(|a| ((q[a] - c[a]) / semi[a]).powi(2)).sum()
}

/// A head phantom (skull 1000 HU between ellipsoids of semi-axes 70/90/80 and 64/84/74 mm,
/// brain 35 HU, air -1000 HU) with bleeds (only inside the skull), its mask, on a
/// 1.5 x 1.5 x 5 mm grid.
fn head(h: &Head, bleeds: &[Bleed], oriented: bool) -> (Volume, Array3<u8>) {
    let dims = [170, 190, 36];
    let spacing = [1.5, 1.5, 5.0];
    let a = grid_affine(dims, spacing);
    let m = rotation(h.yaw_deg, h.roll_deg);
    let mut hu = Array3::<f32>::zeros((dims[2], dims[1], dims[0]));
    let mut mask = Array3::<u8>::zeros(hu.dim());
    for ((z, y, x), v) in hu.indexed_iter_mut() {
        let p = [x as f64 * spacing[0] + a[0][3], y as f64 * spacing[1] + a[1][3], z as f64 * spacing[2] + a[2][3]];
        let d = [p[0] - h.shift[0], p[1] - h.shift[1], p[2] - h.shift[2]];
        // head frame = M^T (p - shift)
        let q = [0, 1, 2].map(|j| (0..3).map(|i| m[i][j] * d[i]).sum::<f64>());
        let outer = inside(q, [0.0; 3], [70.0, 90.0, 80.0]);
        let inner = inside(q, [0.0; 3], [64.0, 84.0, 74.0]);
        *v = if inner <= 1.0 {
            35.0
        } else if outer <= 1.0 && p[0] < h.cut_x {
            1000.0
        } else {
            -1000.0
        };
        if inner <= 1.0 {
            if let Some(b) = bleeds.iter().find(|b| inside(q, b.centre, b.semi) <= 1.0) {
                *v = 50.0 + b.hu_step * ((x + y + z) % 5) as f32;
                mask[[z, y, x]] = 1;
            }
        }
    }
    let volume = Volume::from_array(hu, spacing, oriented.then_some(a)).unwrap();
    (volume, mask)
}

fn findings(volume: &Volume, mask: &Array3<u8>) -> (Vec<ichseg::Lesion>, Findings) {
    let lesions = find_lesions(mask.view(), volume.spacing(), &volume.affine());
    let f = Findings::new(volume, mask.view(), &lesions).unwrap();
    // the midline search scored on a pool finds the same plane, to the last bit
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    assert_eq!(Findings::on_pool(volume, mask.view(), &lesions, Some(&pool)).unwrap(), f);
    (lesions, f)
}

/// Which lesion holds the head-frame point nearest `centre`: lesions are ranked by size.
fn lesion_at(lesions: &[ichseg::Lesion], h: &Head, centre: [f64; 3]) -> usize {
    let m = rotation(h.yaw_deg, h.roll_deg);
    let world: Vec<f64> = (0..3).map(|i| h.shift[i] + (0..3).map(|j| m[i][j] * centre[j]).sum::<f64>()).collect();
    let dist = |l: &ichseg::Lesion| (0..3).map(|i| (l.centroid_world_mm[i] - world[i]).powi(2)).sum::<f64>();
    (0..lesions.len()).min_by(|&a, &b| dist(&lesions[a]).total_cmp(&dist(&lesions[b]))).unwrap()
}

#[test]
fn abc2_of_ellipsoids_is_within_10_percent_and_voxel_volume_within_2() {
    let (a, b, c) = (30.0, 18.0, 20.0);
    let truth_ml = 4.0 / 3.0 * PI * a * b * c / 1000.0;
    for spacing in [[0.5, 0.5, 5.0], [0.9, 0.9, 2.5], [0.45, 0.7, 1.0], [1.0, 1.0, 5.0]] {
        for deg in [0.0f64, 30.0, 45.0, 70.0, 110.0] {
            let dims =
                [(36.0 / spacing[0]) as usize * 2, (36.0 / spacing[1]) as usize * 2, (24.0 / spacing[2]) as usize * 2];
            let centre = [0.37 * spacing[0], -0.21 * spacing[1], 0.13 * spacing[2]];
            let (cs, sn) = (deg.to_radians().cos(), deg.to_radians().sin());
            let af = grid_affine(dims, spacing);
            let mut hu = Array3::<f32>::from_elem((dims[2], dims[1], dims[0]), 35.0);
            let mut mask = Array3::<u8>::zeros(hu.dim());
            for ((z, y, x), v) in hu.indexed_iter_mut() {
                let p = [0, 1, 2].map(|i| [x, y, z][i] as f64 * spacing[i] + af[i][3] - centre[i]);
                let (u, w) = (cs * p[0] + sn * p[1], -sn * p[0] + cs * p[1]);
                if (u / a).powi(2) + (w / b).powi(2) + (p[2] / c).powi(2) <= 1.0 {
                    *v = 65.0;
                    mask[[z, y, x]] = 1;
                }
            }
            // No affine: orientation unknown, so the side must be too.
            let volume = Volume::from_array(hu, spacing, None).unwrap();
            let (lesions, f) = findings(&volume, &mask);
            assert_eq!(lesions.len(), 1);
            let what = format!("spacing {spacing:?} angle {deg}");
            let l = &f.lesions[0];
            let vol_err = (lesions[0].volume_ml - truth_ml).abs() / truth_ml;
            assert!(vol_err < 0.02, "{what}: voxel volume {} vs {truth_ml} ({vol_err})", lesions[0].volume_ml);
            let abc_err = (l.abc2_ml - truth_ml).abs() / truth_ml;
            assert!(abc_err < 0.10, "{what}: ABC/2 {:?} vs {truth_ml} ({abc_err})", l.abc2);
            assert!((l.abc2.a_mm - 2.0 * a).abs() < 2.0 * spacing[0].max(spacing[1]), "{what}: A {:?}", l.abc2);
            assert!((l.abc2.b_mm - 2.0 * b).abs() < 2.0 * spacing[0].max(spacing[1]), "{what}: B {:?}", l.abc2);
            assert_eq!(l.side, Side::Unknown, "{what}");
            assert!(!f.midline.found && f.midline.reason.as_deref().unwrap().contains("orientation"));
            assert_eq!((l.density.mean_hu, l.density.median_hu, l.density.max_hu), (65.0, 65.0, 65.0));
            assert_eq!(l.flags.ge_30_ml, lesions[0].volume_ml >= 30.0);
        }
    }
}

#[test]
fn bleeds_on_a_known_side_of_a_turned_shifted_head() {
    // Shifted 25 mm towards the patient's right: the grid's centre is not the midline, so a
    // bleed 12 mm left of the head's midline lies right of the grid's centre.
    for (yaw, roll) in [(0.0, 0.0), (12.0, 0.0), (-18.0, 6.0), (25.0, -8.0)] {
        let h = Head { yaw_deg: yaw, roll_deg: roll, shift: [25.0, -8.0, 4.0], cut_x: f64::INFINITY };
        let right = [35.0, 10.0, 0.0];
        let left = [-12.0, -25.0, 15.0];
        let bleeds = [
            Bleed { centre: right, semi: [12.0, 16.0, 14.0], hu_step: 5.0 },
            Bleed { centre: left, semi: [6.0, 9.0, 12.0], hu_step: 3.0 },
        ];
        let (volume, mask) = head(&h, &bleeds, true);
        let (lesions, f) = findings(&volume, &mask);
        let what = format!("yaw {yaw} roll {roll}: {:?}", f.midline);
        assert_eq!(lesions.len(), 2, "{what}");
        assert!(f.midline.found, "{what}");
        let n = rotation(yaw, roll).map(|row| row[0]); // head's +u axis in world
        let dot: f64 = (0..3).map(|i| n[i] * f.midline.normal[i]).sum();
        assert!(dot > 0.998, "{what}: normal off by {:.2} deg", dot.min(1.0).acos().to_degrees());
        let r = lesion_at(&lesions, &h, right);
        let l = lesion_at(&lesions, &h, left);
        assert_ne!(r, l);
        assert_eq!(f.lesions[r].side, Side::Right, "{what}");
        assert_eq!(f.lesions[l].side, Side::Left, "{what}");
        // HU from the volume: 50 + step * (0..=4) by voxel, so max = 50 + 4 step, mean and
        // median in between.
        for d in f.lesions.iter().map(|l| l.density) {
            assert!(
                d.max_hu >= d.median_hu && d.median_hu >= 50.0 && d.mean_hu > 50.0 && d.mean_hu < d.max_hu,
                "{d:?}"
            );
        }
        assert_eq!(f.lesions[r].density.max_hu, 70.0);
        assert_eq!(f.lesions[l].density.max_hu, 62.0);
        assert!(!f.lesions[r].flags.touches_inner_table && !f.lesions[l].flags.touches_inner_table);
        assert!(f.summary.starts_with("2 lesions, "), "{}", f.summary);
        assert!(f.summary.contains(&format!("largest {:.1} mL right", lesions[0].volume_ml)), "{}", f.summary);
    }
}

#[test]
fn a_bleed_straddling_the_midline_crosses_it_and_one_at_the_inner_table_touches_it() {
    let h = Head { yaw_deg: 15.0, roll_deg: 0.0, shift: [-12.0, 6.0, 0.0], cut_x: f64::INFINITY };
    let crossing = [3.0, 20.0, 0.0];
    let rim = [-60.0, -10.0, 10.0]; // against the left inner table (inner semi-axis 64 mm)
    let bleeds = [
        Bleed { centre: crossing, semi: [15.0, 12.0, 12.0], hu_step: 4.0 },
        Bleed { centre: rim, semi: [6.0, 18.0, 15.0], hu_step: 4.0 },
    ];
    let (volume, mask) = head(&h, &bleeds, true);
    let (lesions, f) = findings(&volume, &mask);
    assert_eq!(lesions.len(), 2);
    let c = lesion_at(&lesions, &h, crossing);
    let r = lesion_at(&lesions, &h, rim);
    assert_eq!(f.lesions[c].side, Side::Crossing, "{:?}", f.midline);
    assert_eq!(f.lesions[r].side, Side::Left);
    assert!(f.lesions[r].flags.touches_inner_table);
    assert!(!f.lesions[c].flags.touches_inner_table);
    // The same head without orientation: no side, and the summary says so.
    let (volume, mask) = head(&h, &bleeds, false);
    let (_, f) = findings(&volume, &mask);
    assert!(f.lesions.iter().all(|l| l.side == Side::Unknown));
    assert!(f.summary.contains("side unknown"), "{}", f.summary);
}

#[test]
fn a_head_cut_by_the_field_of_view_gives_unknown_not_a_guess() {
    // Skull only on the patient's left (world x < -20 mm): no mirror symmetry to find.
    let h = Head { yaw_deg: 0.0, roll_deg: 0.0, shift: [0.0; 3], cut_x: -20.0 };
    let bleeds = [Bleed { centre: [-30.0, 0.0, 0.0], semi: [10.0, 10.0, 10.0], hu_step: 2.0 }];
    let (volume, mask) = head(&h, &bleeds, true);
    let (_, f) = findings(&volume, &mask);
    assert!(!f.midline.found, "{:?}", f.midline);
    assert!(f.midline.reason.as_deref().unwrap().contains("not symmetric"), "{:?}", f.midline);
    assert_eq!(f.lesions[0].side, Side::Unknown);
}

#[test]
fn no_lesions_no_findings() {
    let volume = Volume::from_hu(vec![35.0; 64], [4, 4, 4], [1.0; 3]).unwrap();
    let mask = Array3::<u8>::zeros((4, 4, 4));
    let (_, f) = findings(&volume, &mask);
    assert_eq!((f.lesions.len(), f.total_volume_ml, f.total_abc2_ml, f.largest_lesion_ml), (0, 0.0, 0.0, 0.0));
    assert_eq!(f.summary, "no hemorrhage found");
    // A mask that does not fit the volume is an error, not a panic.
    let wrong = Array3::<u8>::zeros((4, 4, 3));
    assert!(Findings::new(&volume, wrong.view(), &[]).is_err());
}
