//! `ichseg demo`: the main job on the shipped sample, with a plain fallback until trained
//! models ship (issue 3): the test-fixture U-Net and a generated phantom volume.

use super::{run_segmentation, RunArgs};
use ichseg::io::nifti;
use ichseg::{Error, Result, Volume};
use ndarray::Array3;
use std::path::{Path, PathBuf};

/// The 64x64 test-fixture U-Net (Conv, BN, ReLU, MaxPool, ConvTranspose, Concat), fitted for a
/// few steps to bright blobs on one toy volume: a stand-in, not a hemorrhage model.
const FIXTURE_UNET: &[u8] = include_bytes!("../../../tests/fixtures/unet/unet_transpose.onnx");

struct DemoInputs {
    model: PathBuf,
    volume: PathBuf,
    ground_truth: Option<PathBuf>,
    trained: bool,
}

pub fn run(out: &Path, run: &RunArgs) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let inputs = match shipped_inputs() {
        Some(i) => i,
        None => fallback_inputs(out)?,
    };
    if !inputs.trained {
        println!("NOTE: no trained models are shipped yet (models/unet.onnx, models/samples/: issue 3).");
        println!("      This demo runs the 64x64 test-fixture U-Net (fitted for a few steps to bright blobs on");
        println!("      one toy volume, not a hemorrhage model) on a crude generated volume: it exercises the");
        println!("      whole pipeline, but neither the mask nor the scores mean anything clinically.\n");
    }
    println!("model     {}", inputs.model.display());
    println!("volume    {}", inputs.volume.display());
    let mask = out.join("mask.nii.gz");
    let prob = out.join("prob.nii.gz");
    let report = out.join("report.json");
    let overlay = out.join("overlay.png");
    let options = ichseg::SegmenterOptions::default();
    let outcome = run_segmentation(
        std::slice::from_ref(&inputs.volume),
        &Default::default(),
        &inputs.model,
        &options,
        run,
        (&mask, Some(&prob), Some(&report), Some(&overlay)),
    )?;
    super::print_summary(&outcome.report);
    if let Some(gt) = &inputs.ground_truth {
        let (_, truth) = nifti::read_mask(gt)?;
        let e = ichseg::metrics::evaluate(&[(outcome.result.mask.view(), truth.view())])?;
        let s = &e.overall;
        println!(
            "vs truth  mIoU {:.1}%  IoU_h {:.1}%  Dice {:.1}%  (ground truth {})",
            100.0 * s.miou,
            100.0 * s.iou_hemorrhage,
            100.0 * s.dice,
            gt.display()
        );
    }
    println!("\nwrote {}, {}, {}, {}", mask.display(), prob.display(), report.display(), overlay.display());
    Ok(())
}

/// The trained U-Net and sample volume, looked up from the working directory, then the source tree.
fn shipped_inputs() -> Option<DemoInputs> {
    [PathBuf::from("models"), Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models")]
        .into_iter()
        .find_map(|dir| {
            let model = dir.join("unet.onnx");
            let volume = dir.join("samples/sample.nii.gz");
            (model.is_file() && volume.is_file()).then(|| {
                let gt = dir.join("samples/sample_mask.nii.gz");
                DemoInputs { model, volume, ground_truth: gt.is_file().then_some(gt), trained: true }
            })
        })
}

fn fallback_inputs(out: &Path) -> Result<DemoInputs> {
    let model = out.join("fixture_unet_toy.onnx");
    ichseg::io::atomic::write_atomic(&model, |w| w.write_all(FIXTURE_UNET).map_err(|e| Error::io(&model, e)))?;
    let (volume, truth) = phantom();
    let header = nifti::header_for(&volume);
    let volume_path = out.join("sample_generated.nii.gz");
    let truth_path = out.join("sample_generated_mask.nii.gz");
    nifti::write_volume(&volume_path, &header, &volume)?;
    nifti::write_mask(&truth_path, &header, &truth)?;
    Ok(DemoInputs { model, volume: volume_path, ground_truth: Some(truth_path), trained: false })
}

/// A crude 160x160x12 head: air, skull ring, brain with noise, one 70 HU bleed over 4 slices.
fn phantom() -> (Volume, Array3<u8>) {
    let (nx, ny, nz) = (160usize, 160usize, 12usize);
    let mut hu = Array3::<f32>::from_elem((nz, ny, nx), -1000.0);
    let mut truth = Array3::<u8>::zeros((nz, ny, nx));
    let mut seed = 0x2545_f491_u32;
    let mut noise = move || {
        // xorshift: deterministic, dependency-free noise in [-1, 1)
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    for ((z, y, x), v) in hu.indexed_iter_mut() {
        let (dx, dy) = ((x as f32 - 80.0) / 62.0, (y as f32 - 80.0) / 70.0);
        let r = (dx * dx + dy * dy).sqrt();
        if r < 0.9 {
            *v = 34.0 + 5.0 * noise();
            let (bx, by, bz) = ((x as f32 - 105.0) / 14.0, (y as f32 - 70.0) / 10.0, (z as f32 - 6.5) / 2.0);
            if bx * bx + by * by + bz * bz < 1.0 {
                *v = 70.0 + 5.0 * noise();
                truth[[z, y, x]] = 1;
            }
        } else if r < 1.0 {
            *v = 1200.0;
        }
    }
    let volume = Volume::from_array(hu, [0.9, 0.9, 5.0], None).expect("phantom is finite and non-empty");
    (volume, truth)
}
