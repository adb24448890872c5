//! Writes a copy of a BCIHM-layout data set whose CTs hold air outside the intracranial mask
//! (docs/INTRACRANIAL.md), for the experiment of classifiers that never see the skull (issue 20;
//! not yet scored, so not in docs/RESULTS.md). Masks and the slice-label CSV are linked, not
//! copied.
//!
//! cargo run --release --example strip_outside_skull -- IN_DIR OUT_DIR [MARGIN_MM]

use ichseg::io::nifti;
use ichseg::skull::intracranial::intracranial_mask;
use std::path::Path;

/// What replaces everything outside the mask: air, as around the head.
const AIR_HU: f32 = -1000.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = [args.first(), args.get(1)].map(|a| a.map(Path::new));
    let (Some(input), Some(output)) = (input, output) else {
        return Err("usage: strip_outside_skull IN_DIR OUT_DIR [MARGIN_MM]".into());
    };
    let margin_mm: f64 = args.get(2).map_or(Ok(0.0), |m| m.parse())?;
    std::fs::create_dir_all(output.join("ct_scans"))?;
    let source = std::fs::canonicalize(input)?;
    for name in ["masks", "hemorrhage_diagnosis_raw_ct.csv", "acquisition.csv"] {
        let (from, to) = (source.join(name), output.join(name));
        if from.exists() && !to.exists() {
            std::os::unix::fs::symlink(from, to)?;
        }
    }
    let mut names: Vec<_> =
        std::fs::read_dir(input.join("ct_scans"))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let target = output.join("ct_scans").join(&name);
        if target.exists() {
            continue;
        }
        let image = nifti::read(&input.join("ct_scans").join(&name))?;
        let inside = intracranial_mask(&image.volume, margin_mm)?.mask;
        let mut hu = image.volume.data().clone();
        ndarray::Zip::from(&mut hu).and(&inside).for_each(|v, &m| {
            if m == 0 {
                *v = AIR_HU;
            }
        });
        nifti::write_f32(&target, &image.header, &hu)?;
    }
    Ok(())
}
