//! The intracranial mask (`ichseg::skull::intracranial`) on head phantoms built here: an
//! elliptic bone ring around brain, scalp and air, with a craniotomy, a scalp hematoma, slices
//! above the head and anisotropic pixels; then pseudo-labelling and segmentation with the mask
//! on, which must never mark a voxel outside it; and classifiers trained on skull-stripped CTs
//! (`ichseg.skull_strip_mm`), which must see their inputs stripped.

mod common;
use common::{engine, fixture, tiny};

use ichseg::skull::intracranial::{
    intracranial_mask, slice_mask, strip_outside, SliceRegion, AIR_HU, DEFAULT_MARGIN_MM,
};
use ichseg::{OnnxModel, PseudoLabeler, PseudoOptions, Segmenter, SegmenterOptions, Tuned, Volume};
use ndarray::{Array2, Array3, Axis};

const AIR: f32 = -1000.0;
const SCALP: f32 = 40.0;
const BONE: f32 = 1200.0;
const BRAIN: f32 = 35.0;
const BLOOD: f32 = 70.0;

/// An axial head section: outer skull semi-axes (a, b) mm, bone `thick` mm, 5 mm of scalp.
#[derive(Clone, Copy)]
struct Head {
    a: f64,
    b: f64,
    thick: f64,
    /// Bone removed where |y| < gap/2 on the patient's x > 0 side (a craniotomy), mm.
    gap: f64,
    /// A scalp hematoma over x < 0: blood from the skull out to `hematoma` mm beyond it.
    hematoma: f64,
}

impl Head {
    fn closed() -> Head {
        Head { a: 70.0, b: 85.0, thick: 6.0, gap: 0.0, hematoma: 0.0 }
    }
    /// Inside the ellipse of semi-axes (a + d, b + d).
    fn within(&self, x: f64, y: f64, d: f64) -> bool {
        (x / (self.a + d)).powi(2) + (y / (self.b + d)).powi(2) <= 1.0
    }
    fn hu(&self, x: f64, y: f64) -> f32 {
        if self.within(x, y, -self.thick) {
            BRAIN
        } else if self.within(x, y, 0.0) {
            if self.gap > 0.0 && x > 0.0 && y.abs() < self.gap / 2.0 {
                SCALP // the bone flap is gone; soft tissue fills the opening
            } else {
                BONE
            }
        } else if self.hematoma > 0.0 && x < 0.0 && self.within(x, y, self.hematoma) {
            BLOOD
        } else if self.within(x, y, 5.0 + self.hematoma) {
            SCALP
        } else {
            AIR
        }
    }
    /// A slice of `nx` x `ny` pixels of `[sx, sy]` mm, centred.
    fn slice(&self, nx: usize, ny: usize, [sx, sy]: [f64; 2]) -> Array2<f32> {
        Array2::from_shape_fn((ny, nx), |(j, i)| {
            let (x, y) = mm(i, j, nx, ny, [sx, sy]);
            self.hu(x, y)
        })
    }
}

/// Pixel centre (i, j) in mm from the slice's centre.
fn mm(i: usize, j: usize, nx: usize, ny: usize, [sx, sy]: [f64; 2]) -> (f64, f64) {
    ((i as f64 - (nx as f64 - 1.0) / 2.0) * sx, (j as f64 - (ny as f64 - 1.0) / 2.0) * sy)
}

fn count(m: &Array2<u8>) -> usize {
    m.iter().filter(|&&v| v != 0).count()
}

/// The mask holds every brain pixel deeper than `margin + tol` and none shallower than
/// `margin - tol` (mm, measured as the inner ellipse shrunk along both axes).
fn check_inside_minus_margin(head: &Head, mask: &Array2<u8>, spacing: [f64; 2], margin: f64, tol: f64) {
    let (ny, nx) = mask.dim();
    let inner = -head.thick;
    for ((j, i), &v) in mask.indexed_iter() {
        let (x, y) = mm(i, j, nx, ny, spacing);
        if head.within(x, y, inner - margin - tol) {
            assert_eq!(v, 1, "pixel ({i}, {j}) at ({x:.1}, {y:.1}) mm lies {margin} + {tol} mm inside the skull");
        }
        if !head.within(x, y, inner - margin + tol) {
            assert_eq!(v, 0, "pixel ({i}, {j}) at ({x:.1}, {y:.1}) mm is within the margin or outside the brain");
        }
    }
}

#[test]
fn closed_skull_gives_the_inside_minus_the_margin() {
    let spacing = [0.8, 0.8];
    let head = Head::closed();
    let hu = head.slice(220, 240, spacing);
    for margin in [0.0, 2.0, 5.0] {
        let (mask, kind) = slice_mask(hu.view(), spacing, margin);
        assert_eq!(kind, SliceRegion::Enclosed);
        check_inside_minus_margin(&head, &mask, spacing, margin, 1.5 * 0.8);
        // never bone
        assert!(mask.iter().zip(hu.iter()).all(|(&m, &h)| m == 0 || h < 300.0));
    }
    // A wider margin takes a ring of about its width off the brain.
    let area = |m| count(&slice_mask(hu.view(), spacing, m).0) as f64 * 0.64;
    let (a0, a5) = (area(0.0), area(5.0));
    let perimeter = std::f64::consts::PI * (64.0 + 79.0); // about, for the inner ellipse
    let lost = (a0 - a5) / perimeter;
    assert!((4.0..6.0).contains(&lost), "5 mm margin removed a band {lost:.2} mm wide");
}

#[test]
fn a_craniotomy_is_bridged_and_nothing_leaks_out_of_the_head() {
    let spacing = [0.8, 0.8];
    for gap in [30.0, 50.0] {
        let head = Head { gap, ..Head::closed() };
        let hu = head.slice(220, 240, spacing);
        let (mask, kind) = slice_mask(hu.view(), spacing, 2.0);
        assert_eq!(kind, SliceRegion::Hull, "gap {gap} mm");
        let (ny, nx) = mask.dim();
        for ((j, i), &v) in mask.indexed_iter() {
            let (x, y) = mm(i, j, nx, ny, spacing);
            // the whole brain, less the margin, is covered
            if head.within(x, y, -head.thick - 2.0 - 1.2) {
                assert_eq!(v, 1, "gap {gap}: brain pixel ({x:.1}, {y:.1}) missing");
            }
            // nothing outside the skull's outer surface
            if !head.within(x, y, 0.0) {
                assert_eq!(v, 0, "gap {gap}: ({x:.1}, {y:.1}) mm is outside the head's bone");
            }
        }
        // The plain fill would have leaked: the opening joins brain and air through soft tissue.
        let closed = slice_mask(Head::closed().slice(220, 240, spacing).view(), spacing, 2.0).0;
        assert!(count(&mask) >= count(&closed), "the bridged mask is not smaller than the closed skull's");
    }
}

#[test]
fn a_scalp_hematoma_stays_outside() {
    let spacing = [0.8, 0.8];
    for gap in [0.0, 40.0] {
        let head = Head { hematoma: 12.0, gap, ..Head::closed() };
        let hu = head.slice(240, 260, spacing);
        let blood = hu.iter().filter(|&&h| h == BLOOD).count();
        assert!(blood > 500, "the phantom has a hematoma ({blood} pixels)");
        for margin in [0.0, DEFAULT_MARGIN_MM] {
            let (mask, kind) = slice_mask(hu.view(), spacing, margin);
            assert_ne!(kind, SliceRegion::None);
            let inside = mask.iter().zip(hu.iter()).filter(|(&m, &h)| m != 0 && h == BLOOD).count();
            assert_eq!(inside, 0, "gap {gap}, margin {margin}: {inside} hematoma pixels in the mask");
            assert!(count(&mask) > 10_000);
        }
    }
}

#[test]
fn slices_without_a_ring_are_empty() {
    let spacing = [0.8, 0.8];
    let (nx, ny) = (200, 200);
    // air only; scalp only (above the skull); a solid bone cap (the vertex cut flat)
    let air = Array2::from_elem((ny, nx), AIR);
    let scalp = Array2::from_shape_fn((ny, nx), |(j, i)| {
        let (x, y) = mm(i, j, nx, ny, spacing);
        if x * x + y * y < 40.0 * 40.0 {
            SCALP
        } else {
            AIR
        }
    });
    let cap = scalp.mapv(|h| if h == SCALP { BONE } else { h });
    // a U of bone open to the back, as a jaw: not an open skull
    let jaw = Array2::from_shape_fn((ny, nx), |(j, i)| {
        let (x, y) = mm(i, j, nx, ny, spacing);
        let r = (x * x + y * y).sqrt();
        if y < 0.0 && (50.0..56.0).contains(&r) {
            BONE
        } else if r < 60.0 {
            SCALP
        } else {
            AIR
        }
    });
    for (name, hu) in [("air", air), ("scalp", scalp), ("bone cap", cap), ("jaw", jaw)] {
        let (mask, kind) = slice_mask(hu.view(), spacing, 2.0);
        assert_eq!((count(&mask), kind), (0, SliceRegion::None), "{name}");
    }
    // In a volume: the head's slices get a mask, the slice above it none.
    let head = Head::closed().slice(200, 220, spacing);
    let mut data = Array3::from_elem((3, 220, 200), AIR);
    data.index_axis_mut(Axis(0), 0).assign(&head);
    data.index_axis_mut(Axis(0), 1).assign(&head);
    let v = Volume::from_array(data, [0.8, 0.8, 5.0], None).unwrap();
    let ic = intracranial_mask(&v, 2.0).unwrap();
    assert_eq!(ic.slices, [SliceRegion::Enclosed, SliceRegion::Enclosed, SliceRegion::None]);
    assert!(ic.mask.index_axis(Axis(0), 2).iter().all(|&m| m == 0));
    let s = ic.summary(v.voxel_volume_ml());
    assert_eq!((s.slices_enclosed, s.slices_hull, s.slices_empty), (2, 0, 1));
    assert_eq!(s.voxels, ic.mask.iter().filter(|&&m| m != 0).count());
}

#[test]
fn the_margin_is_in_millimetres_on_anisotropic_pixels() {
    // 0.5 mm across x, 1.25 mm along y: the same head in mm, different pixel counts.
    let spacing = [0.5, 1.25];
    let head = Head::closed();
    let hu = head.slice(340, 160, spacing);
    let margin = 5.0;
    let (mask, kind) = slice_mask(hu.view(), spacing, margin);
    assert_eq!(kind, SliceRegion::Enclosed);
    check_inside_minus_margin(&head, &mask, spacing, margin, 1.5 * 1.25);
    // Along the centre row and column the mask ends about `margin` mm inside the inner table:
    // 10 pixels along x, 4 along y.
    let (ny, nx) = mask.dim();
    let row = mask.index_axis(Axis(0), ny / 2);
    let last_x = row.iter().rposition(|&v| v != 0).unwrap();
    let (x_edge, _) = mm(last_x, ny / 2, nx, ny, spacing);
    let col = mask.index_axis(Axis(1), nx / 2);
    let last_y = col.iter().rposition(|&v| v != 0).unwrap();
    let (_, y_edge) = mm(nx / 2, last_y, nx, ny, spacing);
    let (inner_a, inner_b) = (head.a - head.thick, head.b - head.thick);
    assert!((inner_a - x_edge - margin).abs() <= 0.5 + 1e-9, "x: edge {x_edge} mm, inner table {inner_a} mm");
    assert!((inner_b - y_edge - margin).abs() <= 1.25 + 1e-9, "y: edge {y_edge} mm, inner table {inner_b} mm");
}

#[test]
fn bad_margins_are_clear_errors() {
    let v = Volume::from_array(Array3::from_elem((1, 8, 8), BRAIN), [1.0; 3], None).unwrap();
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let e = intracranial_mask(&v, bad).unwrap_err();
        assert!(matches!(e, ichseg::Error::InvalidArgument(_)) && e.to_string().contains("intracranial margin"), "{e}");
    }
    let engine = engine();
    for bad in [-1.0, f64::NAN] {
        let o = SegmenterOptions { intracranial_margin_mm: Some(bad), ..Default::default() };
        let e =
            Segmenter::new(&engine, OnnxModel::load(&fixture("unet/unet_transpose.onnx")).unwrap(), &o).unwrap_err();
        assert!(e.to_string().contains("intracranial margin"), "{e}");
        let o =
            PseudoOptions { intracranial_margin_mm: Tuned::Set(bad), taps: vec![tiny_taps()], ..Default::default() };
        let e = PseudoLabeler::new(&engine, vec![tiny()], &o).unwrap_err();
        assert!(e.to_string().contains("intracranial margin"), "{e}");
    }
}

fn tiny_taps() -> Vec<String> {
    vec!["/layer1/relu_1/Relu_output_0".into(), "/layer2/relu_1/Relu_output_0".into()]
}

/// A 4-slice phantom volume: the top slice above the head, a craniotomy on one slice, a scalp
/// hematoma on another.
fn phantom_volume() -> Volume {
    let spacing = [1.6, 1.6];
    let (nx, ny) = (112, 128);
    let mut data = Array3::from_elem((4, ny, nx), AIR);
    let heads = [Head::closed(), Head { gap: 40.0, ..Head::closed() }, Head { hematoma: 10.0, ..Head::closed() }];
    for (z, head) in heads.iter().enumerate() {
        data.index_axis_mut(Axis(0), z).assign(&head.slice(nx, ny, spacing));
    }
    Volume::from_array(data, [1.6, 1.6, 5.0], None).unwrap()
}

fn outside(mask: &Array3<u8>, ic: &Array3<u8>) -> usize {
    mask.iter().zip(ic.iter()).filter(|(&m, &i)| m != 0 && i == 0).count()
}

#[test]
fn pseudo_labels_with_the_mask_never_leave_it() {
    let volume = phantom_volume();
    let ic = intracranial_mask(&volume, DEFAULT_MARGIN_MM).unwrap();
    let labels = [true; 4];
    // TH 0 marks every voxel the maps touch, and the CRF may spread further: without the mask
    // the pseudo mask leaves the skull, with it never.
    for crf in [None, Some(ichseg::crf::CrfParams::default())] {
        let run = |margin: Option<f64>| {
            let o = PseudoOptions {
                taps: vec![tiny_taps()],
                threshold: Tuned::Set(0.0),
                crf: crf.clone(),
                intracranial_margin_mm: Tuned::from_option(margin),
                ..Default::default()
            };
            PseudoLabeler::new(&engine(), vec![tiny()], &o).unwrap().label(&volume, Some(&labels)).unwrap()
        };
        let plain = run(None);
        assert!(plain.intracranial.is_none());
        assert!(outside(&plain.mask, &ic.mask) > 1000, "the test needs masks that leave the skull without the option");
        let masked = run(Some(DEFAULT_MARGIN_MM));
        assert_eq!(outside(&masked.mask, &ic.mask), 0, "crf {}", crf.is_some());
        assert!(masked.mask.iter().any(|&m| m != 0), "something is left inside");
        // the fused maps the threshold saw are zero outside the mask too
        for f in &masked.fused {
            assert!(f.iter().zip(ic.mask.iter()).all(|(&v, &i)| i != 0 || v == 0.0));
        }
        assert_eq!(masked.intracranial.as_ref().unwrap().mask, ic.mask);
        // the slice above the head ends up empty
        assert!(masked.mask.index_axis(Axis(0), 3).iter().all(|&m| m == 0));
    }
}

#[test]
fn segmentation_with_the_mask_never_leaves_it() {
    let volume = phantom_volume();
    let ic = intracranial_mask(&volume, 3.0).unwrap();
    let model = || OnnxModel::load(&fixture("unet/unet_transpose.onnx")).unwrap();
    // Threshold 0 marks everything: the mask alone decides what is left.
    let plain = Segmenter::new(&engine(), model(), &SegmenterOptions { threshold: 0.0, ..Default::default() })
        .unwrap()
        .segment(&volume)
        .unwrap();
    assert!(outside(&plain.mask, &ic.mask) > 1000);
    let o = SegmenterOptions { threshold: 0.0, intracranial_margin_mm: Some(3.0), ..Default::default() };
    let seg = Segmenter::new(&engine(), model(), &o).unwrap();
    let masked = seg.segment(&volume).unwrap();
    assert_eq!(masked.mask, ic.mask, "threshold 0: exactly the intracranial mask");
    assert!(masked.probability.iter().zip(ic.mask.iter()).all(|(&p, &i)| i != 0 || p == 0.0));
    assert_eq!(seg.config().intracranial_margin_mm, Some(3.0));
    let summary = masked.intracranial.as_ref().unwrap().summary(volume.voxel_volume_ml());
    assert_eq!((summary.slices_enclosed, summary.slices_hull, summary.slices_empty), (2, 1, 1));
}

#[test]
fn a_classifier_trained_on_stripped_cts_sees_its_inputs_stripped() {
    let volume = phantom_volume();
    let labels = [true; 4];
    let ic = intracranial_mask(&volume, DEFAULT_MARGIN_MM).unwrap();
    let by_hand = strip_outside(&volume, &ic.mask).unwrap();
    assert!(by_hand.data().iter().any(|&v| v == AIR_HU) && by_hand.data().iter().all(|&v| v < BONE));
    let stripping = || {
        let mut model = tiny();
        model.metadata.skull_strip_mm = Some(DEFAULT_MARGIN_MM);
        model
    };
    let labeler = |model: OnnxModel, margin: Option<f64>| {
        let o = PseudoOptions {
            taps: vec![tiny_taps()],
            intracranial_margin_mm: Tuned::from_option(margin),
            ..Default::default()
        };
        PseudoLabeler::new(&engine(), vec![model], &o).unwrap()
    };
    let contract = labeler(stripping(), None);
    assert_eq!(contract.configs()[0].skull_strip_mm, Some(DEFAULT_MARGIN_MM));
    let got = contract.label(&volume, Some(&labels)).unwrap();
    // the same as the plain classifier on a CT stripped beforehand: CAMs, probabilities and the
    // CRF's mask (the CRF sees the stripped grey image too)
    let want = labeler(tiny(), None).label(&by_hand, Some(&labels)).unwrap();
    assert_eq!(got.cams, want.cams);
    assert_eq!(got.slice_probabilities, want.slice_probabilities);
    assert_eq!(got.mask, want.mask);
    // and not what the plain classifier makes of the CT with its skull
    let unstripped = labeler(tiny(), None).label(&volume, Some(&labels)).unwrap();
    assert_ne!(got.cams, unstripped.cams);
    // the stripped copy and its mask are in the memory estimate: 4 + 1 bytes a voxel
    let voxels = volume.data().len();
    let plain_bytes = labeler(tiny(), None).buffer_bytes(volume.dims()).unwrap();
    assert_eq!(contract.buffer_bytes(volume.dims()).unwrap(), plain_bytes + 5 * voxels);
    // with the intracranial option at the same margin, the mask is the original CT's
    let both = labeler(stripping(), Some(DEFAULT_MARGIN_MM)).label(&volume, Some(&labels)).unwrap();
    assert_eq!(both.intracranial.unwrap().mask, ic.mask);
    // a margin out of range in the metadata is refused when the model is read
    let e = ichseg::model::ModelMetadata::parse([("ichseg.skull_strip_mm", "60")]).unwrap_err();
    assert!(e.to_string().contains("ichseg.skull_strip_mm"), "{e}");
}
