//! `ichseg pseudo-label`: pseudo masks from slice classifiers, for one scan or a BCIHM-layout
//! dataset folder (resumable).

use super::shard::Shard;
use super::{engine, progress_bar, InputArgs, RunArgs};
use clap::Args;
use ichseg::crf::CrfParams;
use ichseg::io::nifti;
use ichseg::io::slice_labels::SliceLabelTable;
use ichseg::pipeline::report;
use ichseg::sca::{Aggregate, ScfParams};
use ichseg::{CamMethod, Error, Preset, Progress, PseudoLabel, PseudoLabeler, PseudoOptions, Result, Tuned};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The BCIHM per-slice label file inside a dataset folder.
pub(super) const BCIHM_CSV: &str = "hemorrhage_diagnosis_raw_ct.csv";

#[derive(Args)]
pub struct PseudoLabelArgs {
    /// CT volume (.nii or .nii.gz) or a DICOM series' folder; not with --dataset. For a series,
    /// slice labels number the slices in the series' sorted order (along the slice normal,
    /// increasing), as `ichseg inspect SERIES` lists them.
    #[arg(required_unless_present = "dataset", conflicts_with = "dataset")]
    input: Option<PathBuf>,
    #[command(flatten)]
    series: super::input::SeriesArgs,
    /// Classifier ONNX model; repeat for an ensemble (METHOD.md: two).
    #[arg(long = "classifier", required = true, value_name = "ONNX")]
    classifiers: Vec<PathBuf>,
    /// Comma-separated tap tensors, shallow first; repeat, paired in order with --classifier.
    /// SF-CAM amplifies the first tap as METHOD.md's layer 1, so a lone tap is amplified too
    /// [default: each model's ichseg.taps; Grad-CAM: ichseg.deep_tap].
    #[arg(long = "taps", value_name = "T1,T2")]
    taps: Vec<String>,
    /// Output mask on the input's grid (uint8 NIfTI; a name ending in .dcm writes a DICOM-SEG for
    /// DICOM input); with --dataset, the output folder.
    #[arg(long, short)]
    output: PathBuf,
    /// Slice labels CSV: header `slice,label` (0-based slice, 0/1) or BCIHM's
    /// hemorrhage_diagnosis_raw_ct.csv [default: the classifiers' predictions].
    #[arg(long, conflicts_with_all = ["use_predictions", "dataset"])]
    labels: Option<PathBuf>,
    /// Patient number in a BCIHM labels CSV [default: the scan's file name, NNN.nii[.gz]].
    #[arg(long)]
    patient: Option<u32>,
    /// Decide slices by the classifiers (mean bleed probability >= 0.5), not by labels.
    #[arg(long)]
    use_predictions: bool,
    /// BCIHM-layout folder: ct_scans/NNN.nii[.gz] and hemorrhage_diagnosis_raw_ct.csv; writes
    /// OUTPUT/NNN.nii.gz, skipping outputs that exist.
    #[arg(long, value_name = "DIR")]
    dataset: Option<PathBuf>,
    /// With --dataset: process only shard I of N (0 <= I < N), so that N jobs (a SLURM array,
    /// any scheduler) together cover every volume exactly once (docs/SCALE-OUT.md).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Also write the fused map of each tap layer (SCAM, what the threshold sees) as one
    /// float32 4D NIfTI, one volume per tap layer.
    #[arg(long, conflicts_with = "dataset")]
    cam_out: Option<PathBuf>,
    /// Also write a PNG of the fused maps (mean over tap layers) over the CT on the positive
    /// slices, pseudo mask outlined (docs/OVERLAY.md).
    #[arg(long, conflicts_with = "dataset")]
    cam_overlay: Option<PathBuf>,
    /// Also write a PNG montage of the pseudo mask's slices (as `segment --overlay`).
    #[arg(long, conflicts_with = "dataset")]
    overlay: Option<PathBuf>,
    /// Also write a JSON report: models, method, device, positive slices with the classifiers'
    /// bleed probabilities, mask size, timings.
    #[arg(long, conflicts_with = "dataset")]
    report: Option<PathBuf>,
    /// sf (SF-CAM), layer (LayerCAM) or grad (Grad-CAM baseline).
    #[arg(long, default_value = "sf")]
    cam: CamMethod,
    /// What the threshold, the intracranial mask, the bone cut, the small-lesion filter and the
    /// CRF's label confidence and bilateral weight follow unless given here: model (the classifiers' tuned ichseg.pseudo.* metadata, else
    /// METHOD.md's defaults) or paper (METHOD.md exactly). The report says where each came from.
    #[arg(long, default_value = "model", value_parser = parse_preset)]
    preset: Preset,
    /// BLA threshold TH: foreground where a fused map exceeds it [default: the classifiers'
    /// ichseg.pseudo.threshold, else 0.2].
    #[arg(long)]
    threshold: Option<f32>,
    /// SCF reach c (slices each side).
    #[arg(long, default_value_t = 2)]
    scf_c: usize,
    /// SCF neighbour weight w.
    #[arg(long, default_value_t = 0.5)]
    scf_w: f32,
    /// Skip spatial context fusion (negative slices are still emptied).
    #[arg(long)]
    no_scf: bool,
    /// Skip the dense CRF.
    #[arg(long)]
    no_crf: bool,
    /// The dense CRF unary's label confidence, in (0, 1) [default: the classifiers'
    /// ichseg.pseudo.crf_confidence, else 0.7].
    #[arg(long, value_name = "P", conflicts_with = "no_crf")]
    crf_confidence: Option<f32>,
    /// The dense CRF's bilateral (appearance) Potts weight, > 0 [default: the classifiers'
    /// ichseg.pseudo.crf_bilateral_compat, else 10].
    #[arg(long, value_name = "W", conflicts_with = "no_crf")]
    crf_bilateral_compat: Option<f32>,
    /// BLA across tap layers: or, and.
    #[arg(long, default_value = "or", value_parser = parse_aggregate)]
    aggregate: Aggregate,
    /// Intracranial mask (not in the paper): zero the fused maps outside the skull's inside,
    /// found in the CT (bone ring filled, an open ring bridged by its convex hull, eroded by
    /// --intracranial-margin-mm), before BLA and the dense CRF, and cut the CRF's output to it
    /// (docs/INTRACRANIAL.md) [default: the classifiers' ichseg.pseudo.intracranial_margin_mm,
    /// else off].
    #[arg(long, conflicts_with = "no_intracranial_mask")]
    intracranial_mask: bool,
    /// The intracranial mask's margin inside the inner table, in mm (in-plane).
    #[arg(long, value_name = "MM", default_value_t = ichseg::skull::intracranial::DEFAULT_MARGIN_MM, requires = "intracranial_mask")]
    intracranial_margin_mm: f64,
    /// No intracranial mask, whatever the classifiers' metadata says.
    #[arg(long)]
    no_intracranial_mask: bool,
    /// Bone cut (not in the paper): drop from the final mask every voxel above this CT value;
    /// blood is 50-90 HU, and without it the CRF spreads the maps' skull-edge ring over the
    /// bone (docs/RESULTS.md; 100 HU suggested) [default: the classifiers' ichseg.pseudo.max_hu,
    /// else off].
    #[arg(long, value_name = "HU", conflicts_with = "no_bone_cut")]
    max_hu: Option<f32>,
    /// No bone cut, whatever the classifiers' metadata says.
    #[arg(long)]
    no_bone_cut: bool,
    /// Blood-density cut (not in the paper): drop from the final mask every voxel below this CT
    /// value, after the bone cut; acute blood is denser than the brain the maps and the CRF
    /// spread over (docs/RESULTS.md; 42 HU chosen on the phantoms' val split) [default: the
    /// classifiers' ichseg.pseudo.min_hu, else off].
    #[arg(long, value_name = "HU", conflicts_with = "no_min_hu")]
    min_hu: Option<f32>,
    /// No blood-density cut, whatever the classifiers' metadata says.
    #[arg(long)]
    no_min_hu: bool,
    /// Small-lesion filter (not in the paper): drop lesions (3D connected components) smaller
    /// than ML millilitres from the final mask, after the bone cut; most false components of
    /// the phantom pseudo masks are specks of a few voxels (docs/RESULTS.md). 0 keeps every
    /// lesion [default: the classifiers' ichseg.pseudo.min_lesion_ml, else 0].
    #[arg(long, value_name = "ML")]
    min_lesion_ml: Option<f64>,
    #[command(flatten)]
    model_input: InputArgs,
    #[command(flatten)]
    run: RunArgs,
}

fn parse_preset(s: &str) -> std::result::Result<Preset, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

pub(super) fn parse_aggregate(s: &str) -> std::result::Result<Aggregate, String> {
    match s {
        "or" => Ok(Aggregate::Or),
        "and" => Ok(Aggregate::And),
        _ => Err(format!("{s:?}: expected or or and")),
    }
}

/// A tuned step's flags: a value, `--no-...`, or neither (the classifiers' metadata decides).
fn flag<T>(value: Option<T>, off: bool) -> Tuned<T> {
    match (value, off) {
        (Some(v), _) => Tuned::Set(v),
        (None, true) => Tuned::Off,
        (None, false) => Tuned::Auto,
    }
}

impl PseudoLabelArgs {
    fn options(&self) -> Result<PseudoOptions> {
        if self.taps.len() > self.classifiers.len() {
            return Err(Error::arg(format!(
                "{} --taps for {} --classifier: give at most one --taps per classifier, in the same order",
                self.taps.len(),
                self.classifiers.len()
            )));
        }
        let taps = self
            .taps
            .iter()
            .map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .collect();
        Ok(PseudoOptions {
            cam: self.cam,
            taps,
            model: self.model_input.overrides(),
            scf: (!self.no_scf).then_some(ScfParams { c: self.scf_c, w: self.scf_w }),
            threshold: self.threshold.map_or(Tuned::Auto, Tuned::Set),
            aggregate: self.aggregate,
            crf: (!self.no_crf).then(CrfParams::default),
            crf_confidence: self.crf_confidence.map_or(Tuned::Auto, Tuned::Set),
            crf_bilateral_compat: self.crf_bilateral_compat.map_or(Tuned::Auto, Tuned::Set),
            intracranial_margin_mm: flag(
                self.intracranial_mask.then_some(self.intracranial_margin_mm),
                self.no_intracranial_mask,
            ),
            max_hu: flag(self.max_hu, self.no_bone_cut),
            min_hu: flag(self.min_hu, self.no_min_hu),
            min_lesion_ml: self.min_lesion_ml.map_or(Tuned::Auto, Tuned::Set),
            preset: self.preset,
            batch: self.model_input.batch,
            ..Default::default()
        })
    }
}

pub fn run(a: &PseudoLabelArgs) -> Result<()> {
    match (&a.dataset, &a.input) {
        (Some(dir), _) => dataset(a, dir),
        (None, Some(_)) if a.shard.is_some() => Err(Error::arg("--shard splits a --dataset run; give --dataset DIR")),
        (None, Some(input)) => single(a, input),
        (None, None) => Err(Error::arg("give a CT volume or --dataset DIR")),
    }
}

/// The patient number a BCIHM file name carries (`049.nii.gz` -> 49).
pub(super) fn patient_of(path: &Path) -> Option<u32> {
    volume_stem(path)?.parse().ok()
}

/// The file name without `.nii` / `.nii.gz`.
pub(super) fn volume_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))
}

fn single(a: &PseudoLabelArgs, input: &Path) -> Result<()> {
    let options = a.options()?;
    let inputs = vec![input.to_path_buf()];
    super::input::check_outputs(&inputs, &[Some(&a.output)])?;
    super::overlay::check_path(a.overlay.as_deref(), "--overlay")?;
    super::overlay::check_path(a.cam_overlay.as_deref(), "--cam-overlay")?;
    let image = super::input::load(&inputs, &a.series, a.run.memory_limit()?)?;
    let nz = image.volume.num_slices();
    let labels = match &a.labels {
        Some(csv) => Some(SliceLabelTable::read(csv)?.labels(a.patient.or_else(|| patient_of(input)), nz)?),
        None => None,
    };
    let t_load = Instant::now();
    let labeler = PseudoLabeler::from_paths(&engine(&a.run)?, &a.classifiers, &options)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let bar = progress_bar(a.run.quiet, "pseudo-labelling");
    let result = labeler.label_with_progress(&image.volume, labels.as_deref(), &mut |p: Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        true
    })?;
    bar.finish_and_clear();
    let algorithm = ichseg::io::dicom::seg::Algorithm {
        name: a
            .classifiers
            .iter()
            .map(|c| c.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join("+"),
        trained_on: None,
    };
    image.write_mask(&a.output, &result.mask, &algorithm)?;
    if let Some(path) = &a.cam_out {
        nifti::write_f32_series(path, &image.header, &result.fused)?;
    }
    let v = &image.volume;
    if let Some(path) = &a.overlay {
        let lesions = ichseg::lesions::find_lesions(result.mask.view(), v.spacing(), &v.affine());
        let img = super::overlay::render(v.data(), &result.mask, v.spacing(), &v.affine(), &lesions);
        super::overlay::write_png(path, &img)?;
    }
    if let Some(path) = &a.cam_overlay {
        let img = super::overlay::render_cams(
            v.data(),
            &result.mask,
            &result.fused,
            &result.positive,
            v.spacing(),
            &v.affine(),
        );
        super::overlay::write_png(path, &img)?;
    }
    if let Some(path) = &a.report {
        report::write_json(
            path,
            &report::pseudo_label_report(
                &input.display().to_string(),
                &labeler,
                &result,
                image.volume.voxel_volume_ml(),
                load_s,
            ),
        )?;
    }
    if !a.run.quiet {
        print_summary(input, &labeler, &result, labels.is_some(), image.volume.voxel_volume_ml(), load_s);
    }
    Ok(())
}

fn print_summary(input: &Path, labeler: &PseudoLabeler, r: &PseudoLabel, labelled: bool, voxel_ml: f64, load_s: f64) {
    let [nx, ny, nz] = [r.mask.dim().2, r.mask.dim().1, r.mask.dim().0];
    println!("input     {} ({nx}x{ny}x{nz} voxels)", input.display());
    for c in labeler.configs() {
        println!(
            "model     {} (input {}x{}x{}, window {}/{}{}, taps {})",
            c.name,
            c.channels,
            c.input_rows,
            c.input_cols,
            c.window_level,
            c.window_width,
            c.skull_strip_mm.map_or(String::new(), |m| format!(", air outside the skull (margin {m} mm)")),
            c.layers.join(", ")
        );
    }
    let o = labeler.options();
    let t = labeler.settings();
    println!(
        "method    {} CAM, {}SCF {}, BLA {:?} > {}, CRF {}{}{}{}",
        match o.cam {
            CamMethod::Sf => "SF",
            CamMethod::Layer => "Layer",
            CamMethod::Grad => "Grad",
        },
        t.intracranial_margin_mm.value.map_or(String::new(), |m| format!("intracranial mask (margin {m} mm), ")),
        o.scf.map_or("off".to_string(), |s| format!("c={} w={}", s.c, s.w)),
        o.aggregate,
        t.threshold(),
        if o.crf.is_some() {
            format!(
                "on (label confidence {}, bilateral weight {})",
                t.crf_confidence.value.unwrap_or_default(),
                t.crf_bilateral_compat.value.unwrap_or_default()
            )
        } else {
            "off".to_string()
        },
        t.max_hu.value.map_or(String::new(), |h| format!(", bone cut > {h} HU")),
        t.min_hu.value.map_or(String::new(), |h| format!(", blood-density cut < {h} HU")),
        t.min_lesion_ml.value.filter(|&ml| ml > 0.0).map_or(String::new(), |ml| format!(", lesions < {ml} mL dropped"))
    );
    let from_models: Vec<&str> = [
        ("threshold", &t.threshold.source),
        ("intracranial mask", &t.intracranial_margin_mm.source),
        ("bone cut", &t.max_hu.source),
        ("blood-density cut", &t.min_hu.source),
        ("small-lesion filter", &t.min_lesion_ml.source),
        ("CRF label confidence", &t.crf_confidence.source),
        ("CRF bilateral weight", &t.crf_bilateral_compat.source),
    ]
    .into_iter()
    .filter(|(_, source)| source.starts_with("model"))
    .map(|(what, _)| what)
    .collect();
    if !from_models.is_empty() {
        println!("settings  {} from the classifiers' metadata (--preset paper: METHOD.md's)", from_models.join(", "));
    }
    let e = labeler.engine();
    println!("device    {} x{} threads ({})", e.device_name(), e.threads(), e.device_note());
    let positive: Vec<String> = r.positive.iter().enumerate().filter(|(_, &p)| p).map(|(z, _)| z.to_string()).collect();
    println!(
        "slices    {} of {nz} positive ({}): {}",
        positive.len(),
        if labelled { "labels" } else { "predicted" },
        if positive.is_empty() { "none".to_string() } else { positive.join(" ") }
    );
    let voxels = r.mask.iter().filter(|&&v| v != 0).count();
    println!("mask      {voxels} voxels, {:.2} mL", voxels as f64 * voxel_ml);
    let t = &r.timings;
    println!(
        "time      load {load_s:.2} s, preprocess {:.2} s, inference {:.2} s, CAM ({}) {:.2} s, fusion {:.2} s, CRF ({}) {:.2} s, total {:.2} s",
        t.preprocess_s,
        t.inference_s,
        if r.taps_on_device { "cuda, taps read in place" } else { r.cam_device },
        t.cam_s,
        t.fusion_s,
        r.crf_device,
        t.crf_s,
        t.total_s
    );
}

/// What happened to the volumes of a dataset run.
#[derive(Default)]
struct Tally {
    labelled: usize,
    skipped: usize,
    failed: Vec<(String, Error)>,
}

fn dataset(a: &PseudoLabelArgs, dir: &Path) -> Result<()> {
    let started = Instant::now();
    let options = a.options()?;
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let all = dataset_scans(dir)?;
    let scans: Vec<&PathBuf> = all.iter().filter(|s| shard.is_none_or(|sh| sh.holds(s))).collect();
    let table = if a.use_predictions {
        None
    } else {
        let csv = dir.join(BCIHM_CSV);
        if !csv.exists() {
            return Err(Error::arg(format!(
                "{} not found: the dataset needs per-slice labels, or pass --use-predictions",
                csv.display()
            )));
        }
        Some(SliceLabelTable::read(&csv)?)
    };
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;
    let labeler = PseudoLabeler::from_paths(&engine(&a.run)?, &a.classifiers, &options)?;
    let bar = volume_bar(a.run.quiet, scans.len());
    let mut tally = Tally::default();
    for &scan in &scans {
        let stem = volume_stem(scan).unwrap_or("volume").to_string();
        let out = a.output.join(format!("{stem}.nii.gz"));
        bar.set_message(stem.clone());
        if out.exists() {
            tally.skipped += 1;
        } else {
            match label_one(&labeler, scan, table.as_ref(), &out) {
                Ok(()) => tally.labelled += 1,
                Err(e) => {
                    bar.suspend(|| eprintln!("ichseg: {}: {e}", scan.display()));
                    tally.failed.push((stem, e));
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !a.run.quiet {
        if let Some(sh) = shard {
            println!("shard     {}/{}: {} of the dataset's {} volumes", sh.index, sh.count, scans.len(), all.len());
        }
        println!(
            "volumes   {}: labelled {}, skipped {} (output exists), failed {}",
            scans.len(),
            tally.labelled,
            tally.skipped,
            tally.failed.len()
        );
        println!("output    {}", a.output.display());
        println!("time      {:.2} s", started.elapsed().as_secs_f64());
    }
    if tally.failed.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = tally.failed.iter().map(|(n, _)| n.as_str()).collect();
        Err(Error::arg(format!("{} volume(s) failed: {}", names.len(), names.join(", "))))
    }
}

/// `DIR/ct_scans/*.nii[.gz]`, sorted by name.
pub(super) fn dataset_scans(dir: &Path) -> Result<Vec<PathBuf>> {
    let folder = dir.join("ct_scans");
    let entries = std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))?;
    let mut scans = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&folder, e))?.path();
        if path.is_file() && volume_stem(&path).is_some() {
            scans.push(path);
        }
    }
    if scans.is_empty() {
        return Err(Error::arg(format!("{} holds no .nii or .nii.gz volumes", folder.display())));
    }
    scans.sort();
    Ok(scans)
}

/// Pseudo-labels one dataset volume and writes its mask (atomically).
fn label_one(labeler: &PseudoLabeler, scan: &Path, table: Option<&SliceLabelTable>, out: &Path) -> Result<()> {
    let image = nifti::read_within(scan, labeler.engine().memory_limit())?;
    let labels = match table {
        Some(t) => {
            let patient = patient_of(scan).ok_or_else(|| {
                Error::arg(format!("{}: the file name is not a patient number (NNN.nii[.gz])", scan.display()))
            })?;
            Some(t.labels(Some(patient), image.volume.num_slices())?)
        }
        None => None,
    };
    let result = labeler.label(&image.volume, labels.as_deref())?;
    nifti::write_mask(out, &image.header, &result.mask)
}

/// Volumes done of total, drawn only on a terminal and not `--quiet`.
fn volume_bar(quiet: bool, total: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} volumes ({elapsed}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
