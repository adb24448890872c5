//! `ichseg ablate`: the paper's Table 4 ablation (METHOD.md section 7) on one subset of a
//! BCIHM-layout dataset: pseudo-mask quality of each step of the pipeline.
//!
//! The networks run once per volume (one SF-CAM run and one Grad-CAM run of every classifier);
//! every row, and every setting of a tuning grid, is derived from those maps with the public
//! SCA and CRF functions, so a row and `ichseg pseudo-label` with the same settings make the
//! same mask. Rows, for each setting:
//!
//! 1. Grad-CAM on the deep tap (layer4), models ensembled (BME), negative slices emptied;
//! 2. the same + SCF;
//! 3. SF-CAM of each classifier alone, one tap (`--single-tap`);
//! 4. SF-CAM ensembled (BME), the same tap;
//! 5. + SCF;
//! 6. + BLA: every tap, aggregated (OR by default);
//! 7. + dCRF;
//! 8. with `--max-hu`: + the bone cut of `ichseg pseudo-label --max-hu` (not in the paper);
//! 9. with `--min-lesion-ml`: + the small-lesion filter of `ichseg pseudo-label --min-lesion-ml`
//!    (not in the paper);
//! 10. with `--intracranial-margin-mm`: rows 6-7 again with the intracranial mask of
//!     `ichseg pseudo-label --intracranial-mask` applied before BLA and the CRF (not in the
//!     paper; the candidate replacement for the bone cut), then its small-lesion filter when
//!     `--min-lesion-ml` is given.
//!
//! "Before BLA" (rows 3-5) is a single tap layer; which one is our choice (the paper does not
//! say): `--single-tap`, default the deepest of the taps (layer2), the less noisy one.
//! A row's mask is thresholded at `TH` like the pipeline's (strict `>`).

use super::pseudo::{dataset_scans, patient_of, volume_stem, BCIHM_CSV};
use super::{engine, InputArgs, RunArgs};
use clap::Args;
use ichseg::crf::CrfParams;
use ichseg::io::nifti;
use ichseg::io::slice_labels::SliceLabelTable;
use ichseg::metrics::{Pool, Scores};
use ichseg::model::OnnxModel;
use ichseg::pipeline::tail::TailOptions;
use ichseg::sca::{self, Aggregate, ScfParams};
use ichseg::{CamMethod, Error, Preset, PseudoLabeler, PseudoOptions, Result};
use ndarray::Array3;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct AblateArgs {
    /// BCIHM-layout folder: ct_scans/NNN.nii[.gz], masks/NNN.nii[.gz] (ground truth) and
    /// hemorrhage_diagnosis_raw_ct.csv (slice labels).
    #[arg(long, value_name = "DIR")]
    dataset: PathBuf,
    /// Patient split JSON, as `python -m ichseg_training.datasets split` writes it:
    /// {"splits": {"train": [1, 2, ...], "val": [...], "test": [...]}}.
    #[arg(long, value_name = "JSON")]
    split: PathBuf,
    /// Subset of the split to score (tune on val, report on test).
    #[arg(long, default_value = "val")]
    subset: String,
    /// Only the first N volumes of the subset (a quick look).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Classifier ONNX model; repeat for the ensemble (METHOD.md: two).
    #[arg(long = "classifier", required = true, value_name = "ONNX")]
    classifiers: Vec<PathBuf>,
    /// Comma-separated SF-CAM tap tensors, shallow first; repeat, paired with --classifier.
    /// The first tap is amplified as METHOD.md's layer 1, so a lone tap is amplified too
    /// [default: each model's ichseg.taps].
    #[arg(long = "taps", value_name = "T1,T2")]
    taps: Vec<String>,
    /// Grad-CAM tap tensor; repeat, paired with --classifier [default: ichseg.deep_tap].
    #[arg(long = "deep-tap", value_name = "TENSOR")]
    deep_taps: Vec<String>,
    /// The tap (0-based, shallow first) of the rows before BLA [default: the last, layer2].
    #[arg(long, value_name = "INDEX")]
    single_tap: Option<usize>,
    /// Decide slices by the classifiers (mean bleed probability >= 0.5), not by the CSV.
    #[arg(long)]
    use_predictions: bool,
    /// BLA threshold TH; a comma-separated list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "0.2")]
    threshold: Vec<f32>,
    /// SCF reach c; a list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    scf_c: Vec<usize>,
    /// SCF neighbour weight w; a list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    scf_w: Vec<f32>,
    /// BLA across tap layers: or, and.
    #[arg(long, default_value = "or", value_parser = super::pseudo::parse_aggregate)]
    aggregate: Aggregate,
    /// CRF unary label confidence; a list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "0.7")]
    crf_confidence: Vec<f32>,
    /// CRF bilateral (appearance) Potts weight; a list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    crf_bilateral_compat: Vec<f32>,
    /// CRF bilateral intensity width (grey levels of the 0..255 window); a list makes a grid.
    #[arg(long, value_delimiter = ',', default_value = "13")]
    crf_bilateral_srgb: Vec<f32>,
    /// CRF bilateral spatial width (pixels).
    #[arg(long, default_value_t = 80.0)]
    crf_bilateral_sxy: f32,
    /// CRF Gaussian (smoothness) spatial width (pixels).
    #[arg(long, default_value_t = 3.0)]
    crf_gaussian_sxy: f32,
    /// CRF Gaussian (smoothness) Potts weight.
    #[arg(long, default_value_t = 3.0)]
    crf_gaussian_compat: f32,
    /// CRF mean-field iterations.
    #[arg(long, default_value_t = 10)]
    crf_iterations: usize,
    /// Add a last row: the final masks with every voxel above this CT value dropped (the bone
    /// cut of `ichseg pseudo-label --max-hu`, not in the paper).
    #[arg(long, value_name = "HU")]
    max_hu: Option<f32>,
    /// Add a last row: the final masks (after the bone cut, when given) with every voxel below
    /// this CT value dropped (the blood-density cut of `ichseg pseudo-label --min-hu`, not in the
    /// paper).
    #[arg(long, value_name = "HU")]
    min_hu: Option<f32>,
    /// Add a last row: the final masks (after the bone cut and the blood-density cut, when given) without their lesions
    /// smaller than ML millilitres (the small-lesion filter of `ichseg pseudo-label
    /// --min-lesion-ml`, not in the paper).
    #[arg(long, value_name = "ML")]
    min_lesion_ml: Option<f64>,
    /// Add rows: BLA and the dCRF with the fused maps zeroed outside the intracranial mask of
    /// this margin (mm) and the CRF's output cut to it, as `ichseg pseudo-label
    /// --intracranial-mask --intracranial-margin-mm MM` makes them (no bone cut), then the
    /// small-lesion filter when --min-lesion-ml is given (not in the paper).
    #[arg(long, value_name = "MM")]
    intracranial_margin_mm: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model_input: InputArgs,
    #[command(flatten)]
    run: RunArgs,
}

/// One point of the tuning grid: everything a row's mask depends on after the networks.
#[derive(Debug, Clone)]
struct Setting {
    threshold: f32,
    scf_c: usize,
    scf_w: f32,
    crf: CrfParams,
}

/// An `f32` as the decimal it was typed as (0.3, not 0.30000001192092896).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

impl Setting {
    fn json(&self) -> serde_json::Value {
        let c = &self.crf;
        serde_json::json!({
            "threshold": short(self.threshold), "scf_c": self.scf_c, "scf_w": short(self.scf_w),
            "crf": {"label_confidence": short(c.label_confidence), "bilateral_compat": short(c.bilateral_compat),
                    "bilateral_srgb": short(c.bilateral_srgb), "bilateral_sxy": short(c.bilateral_sxy),
                    "gaussian_sxy": short(c.gaussian_sxy), "gaussian_compat": short(c.gaussian_compat),
                    "iterations": c.iterations},
        })
    }
}

impl AblateArgs {
    /// The cartesian product of the listed values, checked.
    fn settings(&self) -> Result<Vec<Setting>> {
        for (flag, hu) in [("--max-hu", self.max_hu), ("--min-hu", self.min_hu)] {
            if let Some(h) = hu.filter(|h| !h.is_finite()) {
                return Err(Error::arg(format!("{flag} must be a finite HU value, got {h}")));
            }
        }
        if let Some(ml) = self.min_lesion_ml.filter(|ml| !(ml.is_finite() && *ml >= 0.0)) {
            return Err(Error::arg(format!("--min-lesion-ml must be finite and >= 0, got {ml}")));
        }
        if let Some(mm) = self.intracranial_margin_mm {
            ichseg::skull::intracranial::check_margin_mm(mm)?;
        }
        let mut out = Vec::new();
        for &threshold in &self.threshold {
            if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
                return Err(Error::arg(format!("--threshold must lie in [0, 1], got {threshold}")));
            }
            for &scf_c in &self.scf_c {
                for &scf_w in &self.scf_w {
                    if !(scf_w.is_finite() && scf_w >= 0.0) {
                        return Err(Error::arg(format!("--scf-w must be finite and >= 0, got {scf_w}")));
                    }
                    for &label_confidence in &self.crf_confidence {
                        for &bilateral_compat in &self.crf_bilateral_compat {
                            for &bilateral_srgb in &self.crf_bilateral_srgb {
                                let crf = CrfParams {
                                    gaussian_sxy: self.crf_gaussian_sxy,
                                    gaussian_compat: self.crf_gaussian_compat,
                                    bilateral_sxy: self.crf_bilateral_sxy,
                                    bilateral_srgb,
                                    bilateral_compat,
                                    iterations: self.crf_iterations,
                                    label_confidence,
                                };
                                crf.validate()?;
                                out.push(Setting { threshold, scf_c, scf_w, crf });
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Pipeline options for one CAM method, with fusion and CRF off: the labelers only
    /// produce maps here.
    fn options(&self, cam: CamMethod, taps: Vec<Vec<String>>) -> PseudoOptions {
        let i = &self.model_input;
        PseudoOptions {
            cam,
            taps,
            model: i.overrides(),
            scf: None,
            crf: None,
            batch: i.batch,
            // the grid's own tail settings apply, not the classifiers' tuned ones
            preset: Preset::Paper,
            ..Default::default()
        }
    }
}

/// One volume of the subset: its scan, ground-truth mask and patient number.
struct Case {
    patient: u32,
    scan: PathBuf,
    mask: PathBuf,
}

/// The patient numbers of `subset` in a split file.
fn split_patients(path: &Path, subset: &str) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::arg(format!("{}: not a split file (JSON): {e}", path.display())))?;
    let splits = json.get("splits").and_then(|s| s.as_object()).ok_or_else(|| {
        Error::arg(format!("{}: no \"splits\" object (expected {{\"splits\": {{\"val\": [1, 2]}}}})", path.display()))
    })?;
    let list = splits.get(subset).ok_or_else(|| {
        let known: Vec<&str> = splits.keys().map(String::as_str).collect();
        Error::arg(format!("{}: no subset {subset:?}; it has {}", path.display(), known.join(", ")))
    })?;
    let patients: Option<Vec<u32>> = list
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())).collect())
        .unwrap_or(None);
    match patients {
        Some(p) if !p.is_empty() => Ok(p),
        Some(_) => Err(Error::arg(format!("{}: subset {subset:?} is empty", path.display()))),
        None => Err(Error::arg(format!("{}: subset {subset:?} is not a list of patient numbers", path.display()))),
    }
}

/// The scans and masks of the split's patients, in the split's order.
fn cases(a: &AblateArgs) -> Result<Vec<Case>> {
    let patients = split_patients(&a.split, &a.subset)?;
    let scans = dataset_scans(&a.dataset)?;
    let mut out = Vec::with_capacity(patients.len());
    for patient in patients {
        let scan = scans.iter().find(|s| patient_of(s) == Some(patient)).ok_or_else(|| {
            Error::arg(format!(
                "patient {patient} of subset {:?} has no scan in {}",
                a.subset,
                a.dataset.join("ct_scans").display()
            ))
        })?;
        let name = scan.file_name().expect("a scan file").to_owned();
        let mask = a.dataset.join("masks").join(name);
        if !mask.exists() {
            return Err(Error::arg(format!("no ground-truth mask {} for {}", mask.display(), scan.display())));
        }
        out.push(Case { patient, scan: scan.clone(), mask });
    }
    out.truncate(a.limit.unwrap_or(usize::MAX));
    Ok(out)
}

/// The row names, in table order.
fn row_names(models: &[String], tap: &str, a: &AblateArgs) -> Vec<String> {
    let mut rows = vec!["Grad-CAM deep tap, ensemble".to_string(), "  + SCF".to_string()];
    rows.extend(models.iter().map(|m| format!("SF-CAM {tap}, {m} alone")));
    rows.push(format!("SF-CAM {tap}, ensemble (BME)"));
    rows.push("  + SCF".to_string());
    rows.push(format!("  + BLA (all taps, {})", format!("{:?}", a.aggregate).to_uppercase()));
    rows.push("  + dCRF".to_string());
    if let Some(h) = a.max_hu {
        rows.push(format!("  + bone cut (> {h} HU)"));
    }
    if let Some(h) = a.min_hu {
        rows.push(format!("  + blood-density cut (< {h} HU)"));
    }
    if let Some(ml) = a.min_lesion_ml {
        rows.push(format!("  + small-lesion filter (< {ml} mL)"));
    }
    if let Some(mm) = a.intracranial_margin_mm {
        rows.push(format!("  + BLA inside the intracranial mask ({mm} mm), no bone cut"));
        rows.push("  + dCRF inside the intracranial mask".to_string());
        if let Some(ml) = a.min_lesion_ml {
            rows.push(format!("  + small-lesion filter (< {ml} mL), intracranial mask"));
        }
    }
    rows
}

/// Thresholds one map: BLA over a single layer.
fn cut(map: &Array3<f32>, threshold: f32) -> Result<Array3<u8>> {
    sca::bla(&[map.view()], threshold, Aggregate::Or)
}

/// The per-volume maps every setting starts from.
struct Maps {
    positive: Vec<bool>,
    /// Grad-CAM ensemble (BME over models).
    grad: Array3<f32>,
    /// Each model's SF-CAM at the single tap, negative slices emptied.
    single: Vec<Array3<f32>>,
    /// SF-CAM ensemble per tap.
    ensemble: Vec<Array3<f32>>,
}

/// Every row's mask for one setting, in [`row_names`] order.
fn masks(
    maps: &Maps,
    s: &Setting,
    tap: usize,
    a: &AblateArgs,
    crf: (&PseudoLabeler, &ichseg::Volume),
) -> Result<Vec<Array3<u8>>> {
    let off = ScfParams { c: 0, w: 0.0 };
    let on = ScfParams { c: s.scf_c, w: s.scf_w };
    let pos = &maps.positive;
    let mut out = vec![cut(&sca::scf(maps.grad.view(), pos, &off)?, s.threshold)?];
    out.push(cut(&sca::scf(maps.grad.view(), pos, &on)?, s.threshold)?);
    for m in &maps.single {
        out.push(cut(m, s.threshold)?);
    }
    out.push(cut(&sca::scf(maps.ensemble[tap].view(), pos, &off)?, s.threshold)?);
    // The pipeline's own tail (SCF, BLA, CRF, bone cut, blood-density cut, filter), recording the mask after each
    // step; the single-tap SCF row goes before them.
    let tail = TailOptions {
        scf: Some(on),
        threshold: s.threshold,
        aggregate: a.aggregate,
        crf: Some(s.crf.clone()),
        intracranial_margin_mm: None,
        max_hu: a.max_hu,
        min_hu: a.min_hu,
        min_lesion_ml: a.min_lesion_ml,
    };
    let before = out.len();
    let finished = crf.0.finish(crf.1, maps.ensemble.clone(), pos, &tail, &mut |_, mask| out.push(mask.clone()))?;
    out.insert(before, cut(&finished.fused[tap], s.threshold)?);
    if let Some(mm) = a.intracranial_margin_mm {
        let inside = TailOptions { intracranial_margin_mm: Some(mm), max_hu: None, min_hu: None, ..tail };
        crf.0.finish(crf.1, maps.ensemble.clone(), pos, &inside, &mut |_, mask| out.push(mask.clone()))?;
    }
    Ok(out)
}

pub fn run(a: &AblateArgs) -> Result<()> {
    let started = Instant::now();
    let settings = a.settings()?;
    for (what, n) in [("--taps", a.taps.len()), ("--deep-tap", a.deep_taps.len())] {
        if n > a.classifiers.len() {
            return Err(Error::arg(format!("{n} {what} for {} --classifier: at most one each", a.classifiers.len())));
        }
    }
    let cases = cases(a)?;
    let table = if a.use_predictions {
        None
    } else {
        let csv = a.dataset.join(BCIHM_CSV);
        if !csv.exists() {
            return Err(Error::arg(format!("{} not found: give slice labels or --use-predictions", csv.display())));
        }
        Some(SliceLabelTable::read(&csv)?)
    };
    let engine = engine(&a.run)?;
    let models = a.classifiers.iter().map(|p| OnnxModel::load(p)).collect::<Result<Vec<_>>>()?;
    let sf_taps = a
        .taps
        .iter()
        .map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .collect();
    let sf = PseudoLabeler::new(&engine, models.clone(), &a.options(CamMethod::Sf, sf_taps))?;
    let deep = a.deep_taps.iter().map(|t| vec![t.clone()]).collect();
    let grad = PseudoLabeler::new(&engine, models, &a.options(CamMethod::Grad, deep))?;
    let taps = sf.layer_count();
    let tap = a.single_tap.unwrap_or(taps - 1);
    if tap >= taps {
        return Err(Error::arg(format!("--single-tap {tap}: the classifiers have {taps} tap(s), 0..={}", taps - 1)));
    }
    let configs = sf.configs();
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let rows = row_names(&names, &configs[0].layers[tap], a);
    let mut pools = vec![vec![Pool::default(); rows.len()]; settings.len()];
    let (mut slices, mut positives) = (0, 0);
    for (k, case) in cases.iter().enumerate() {
        let t = Instant::now();
        let image = nifti::read(&case.scan)?;
        let (_, gt) = nifti::read_mask(&case.mask)?;
        let volume = &image.volume;
        let nz = volume.num_slices();
        if gt.dim() != volume.data().dim() {
            return Err(Error::arg(format!(
                "{} has shape {:?} but {} has {:?}",
                case.mask.display(),
                gt.shape(),
                case.scan.display(),
                volume.data().shape()
            )));
        }
        let labels = table.as_ref().map(|t| t.labels(Some(case.patient), nz)).transpose()?;
        let s = sf.label(volume, labels.as_deref())?;
        let g = grad.label(volume, labels.as_deref())?;
        let positive = s.positive.clone();
        let empty = ScfParams { c: 0, w: 0.0 };
        let single = s.cams.iter().map(|m| sca::scf(m[tap].view(), &positive, &empty)).collect::<Result<_>>()?;
        let ensemble = (0..taps)
            .map(|i| sca::bme(&s.cams.iter().map(|m| m[i].view()).collect::<Vec<_>>()))
            .collect::<Result<_>>()?;
        let grad_ens = sca::bme(&g.cams.iter().map(|m| m[0].view()).collect::<Vec<_>>())?;
        let maps = Maps { positive, grad: grad_ens, single, ensemble };
        for (setting, pool) in settings.iter().zip(pools.iter_mut()) {
            for (mask, p) in masks(&maps, setting, tap, a, (&sf, volume))?.iter().zip(pool.iter_mut()) {
                p.add_sized(mask.view(), gt.view(), volume.voxel_volume_ml())?;
            }
        }
        slices += nz;
        positives += maps.positive.iter().filter(|&&p| p).count();
        if !a.run.quiet {
            let stem = volume_stem(&case.scan).unwrap_or("?");
            eprintln!("ablate  {:>3}/{}  {stem}: {nz} slices, {:.1} s", k + 1, cases.len(), t.elapsed().as_secs_f64());
        }
    }
    let results: Vec<(&Setting, Vec<Scores>)> =
        settings.iter().zip(&pools).map(|(s, p)| (s, p.iter().map(Pool::scores).collect())).collect();
    let seconds = started.elapsed().as_secs_f64();
    let decision = if a.use_predictions { "predictions" } else { "labels" };
    if a.json {
        let runs: Vec<_> = results
            .iter()
            .map(|(s, scores)| {
                let rows: Vec<_> =
                    rows.iter().zip(scores).map(|(r, sc)| serde_json::json!({"row": r.trim(), "scores": sc})).collect();
                serde_json::json!({"setting": s.json(), "rows": rows})
            })
            .collect();
        let out = serde_json::json!({
            "dataset": a.dataset, "split": a.split, "subset": a.subset, "volumes": cases.len(),
            "slices": slices, "positive_slices": positives, "slice_decision": decision,
            "single_tap": configs[0].layers[tap], "aggregate": format!("{:?}", a.aggregate).to_lowercase(),
            "classifiers": configs, "device": engine.device_name(), "threads": engine.threads(),
            "seconds": seconds, "runs": runs,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::arg(e.to_string()))?);
        return Ok(());
    }
    println!(
        "subset    {} of {}: {} volumes, {slices} slices, {positives} positive ({decision})",
        a.subset,
        a.split.display(),
        cases.len()
    );
    println!("models    {}", names.join(" + "));
    for (s, scores) in &results {
        let c = &s.crf;
        println!(
            "\nTH {}  SCF c={} w={}  CRF confidence {} bilateral compat {} srgb {} sxy {}, gaussian compat {} sxy {}, {} iterations",
            s.threshold, s.scf_c, s.scf_w, c.label_confidence, c.bilateral_compat, c.bilateral_srgb, c.bilateral_sxy,
            c.gaussian_compat, c.gaussian_sxy, c.iterations
        );
        println!(
            "{:<44} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "configuration", "mIoU", "IoU_h", "Dice", "IoU_bg", "CL", "FPL"
        );
        let pct = |v: Option<f64>| v.map_or("    n/a".to_string(), |v| format!("{:>7.2}", 100.0 * v));
        for (r, sc) in rows.iter().zip(scores) {
            println!(
                "{:<44} {} {} {} {} {} {}",
                r,
                pct(Some(sc.miou)),
                pct(Some(sc.iou_hemorrhage)),
                pct(Some(sc.dice)),
                pct(Some(sc.iou_background)),
                pct(sc.cl),
                pct(sc.fpl)
            );
        }
    }
    println!("\n(percent; IoU pooled over all slices of the subset, mIoU = mean of background and hemorrhage IoU)");
    println!("time      {seconds:.1} s on {} x{} threads", engine.device_name(), engine.threads());
    Ok(())
}
