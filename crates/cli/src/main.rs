//! `ichseg`: the command-line face of libichseg (segment, pseudo-label, ablate, eval, inspect, cam-graph, demo, doctor, skull-strip).

mod ablate;
mod demo;
mod doctor;
mod font;
mod input;
mod overlay;
mod pseudo;
mod shard;
mod strip;

use clap::{Args, Parser, Subcommand};
use ichseg::alloc::MemoryLimit;
use ichseg::io::nifti;
use ichseg::model::onnx_grad::{self, GradientGraph, GradientOptions};
use ichseg::model::OnnxModel;
use ichseg::pipeline::report;
use ichseg::pipeline::segment::SegmenterConfig;
use ichseg::{
    Device, Engine, EngineOptions, Error, ModelOverrides, Progress, Result, Segmenter, SegmenterOptions, Window,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "ichseg", version, about = "Intracerebral-hemorrhage segmentation of head CT (libichseg)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment a CT volume with a U-Net: mask, optional probabilities, JSON report.
    Segment(SegmentArgs),
    /// Make pseudo masks from slice classifiers (SF-CAM, SCA, dense CRF) for a scan or a
    /// BCIHM-layout dataset.
    PseudoLabel(pseudo::PseudoLabelArgs),
    /// Pseudo-mask quality of each step of the pipeline on a dataset split (the paper's Table 4
    /// ablation), optionally over a grid of settings.
    Ablate(ablate::AblateArgs),
    /// Score predicted masks against ground truth (IoU, mIoU, Dice, CL/ML/FPL).
    Eval(EvalArgs),
    /// Show a model's inputs, outputs, ichseg.* metadata and candidate CAM taps.
    Inspect(InspectArgs),
    /// Write a classifier's gradient graph: logits, tap activations and d logit / d tap in one ONNX.
    CamGraph(CamGraphArgs),
    /// Run the main job on the shipped sample data and models.
    Demo(DemoArgs),
    /// Report the CUDA stack (driver, runtime, cuDNN, NVRTC, cuBLAS, devices) and the device
    /// `--device auto` would choose.
    Doctor(doctor::DoctorArgs),
    /// Write CTs with air outside the intracranial mask: the inputs of classifiers trained on
    /// skull-stripped CTs (ichseg.skull_strip_mm), one volume or a BCIHM-layout dataset.
    SkullStrip(strip::SkullStripArgs),
}

/// Settings shared by every command that runs a network.
#[derive(Args, Clone)]
struct RunArgs {
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Refuse, before allocating, work whose buffers sized by the input (the decoded volume,
    /// outputs, maps) exceed this many MiB; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    memory_limit_mb: u64,
    /// Trade speed for memory: on the CPU, every 3x3 convolution keeps its weights as they are
    /// instead of Winograd's copies, 4x their size, as by default only the widest layers do
    /// (slower; docs/BENCHMARKS.md).
    #[arg(long)]
    low_memory: bool,
    /// Hide the progress bar and the summary.
    #[arg(long, short)]
    quiet: bool,
}

/// How slices become network inputs; each setting overrides the model's ichseg.* metadata,
/// which overrides the defaults. Shared by `segment` and `pseudo-label`.
#[derive(Args, Clone)]
struct InputArgs {
    /// Slices per network run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// CT window LEVEL,WIDTH in HU [default: metadata, else 50,130].
    #[arg(long, value_parser = parse_window)]
    window: Option<Window>,
    /// Network input ROWSxCOLS [default: model shape or metadata, else 384x384].
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(usize, usize)>,
    /// Input channels, 1 or 3 [default: model shape or metadata, else 1].
    #[arg(long)]
    channels: Option<usize>,
    /// MEAN,STD normalisation after windowing [default: metadata, else none].
    #[arg(long, value_parser = parse_pair)]
    normalize: Option<(f32, f32)>,
    /// Logit index of the bleed class [default: metadata, else 1].
    #[arg(long)]
    bleed_index: Option<usize>,
}

/// Segmentation settings: the input settings and the probability threshold.
#[derive(Args, Clone)]
struct ModelArgs {
    /// Bleed probability at or above which a voxel is hemorrhage.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Drop lesions (3D connected components) smaller than ML millilitres from the mask before
    /// the lesion list; not in the paper. 0 keeps every lesion [default: the model's tuned
    /// ichseg.segment.min_lesion_ml, else 0].
    #[arg(long, value_name = "ML")]
    min_lesion_ml: Option<f64>,
    /// Zero the probability and the mask outside the skull's inside, found in the CT (bone
    /// ring filled, an open ring bridged by its convex hull, eroded by
    /// --intracranial-margin-mm; docs/INTRACRANIAL.md); not in the paper [default: off].
    #[arg(long)]
    intracranial_mask: bool,
    /// The intracranial mask's margin inside the inner table, in mm (in-plane).
    #[arg(long, value_name = "MM", default_value_t = ichseg::skull::intracranial::DEFAULT_MARGIN_MM, requires = "intracranial_mask")]
    intracranial_margin_mm: f64,
    #[command(flatten)]
    input: InputArgs,
}

impl InputArgs {
    /// The settings given in place of the model's metadata.
    fn overrides(&self) -> ModelOverrides {
        ModelOverrides {
            window: self.window,
            input_size: self.input_size,
            channels: self.channels,
            normalize: self.normalize,
            bleed_index: self.bleed_index,
        }
    }
}

impl ModelArgs {
    fn options(&self) -> SegmenterOptions {
        SegmenterOptions {
            threshold: self.threshold,
            batch: self.input.batch,
            model: self.input.overrides(),
            min_lesion_ml: self.min_lesion_ml,
            intracranial_margin_mm: self.intracranial_mask.then_some(self.intracranial_margin_mm),
        }
    }
}

#[derive(Args)]
struct SegmentArgs {
    /// CT volume (.nii or .nii.gz, HU after scl_slope/scl_inter), or a DICOM series: its folder
    /// (searched recursively) or its files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    series: input::SeriesArgs,
    /// U-Net ONNX model.
    #[arg(long, short)]
    model: PathBuf,
    /// Output mask on the input's grid: a name ending in .dcm writes a DICOM-SEG (DICOM input
    /// only), any other a uint8 NIfTI.
    #[arg(long, short)]
    output: PathBuf,
    /// Also write the bleed probability: .dcm for a FRACTIONAL DICOM-SEG, else float32 NIfTI.
    #[arg(long)]
    prob: Option<PathBuf>,
    /// Also write a JSON report (lesions with ABC/2, density, side and flags, volumes, summary,
    /// model, device, timings).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the text summary (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Also write a PNG montage of the slices with lesions: brain window, mask outline, lesion
    /// numbers as in the report, scale bar, orientation letters (docs/OVERLAY.md).
    #[arg(long)]
    overlay: Option<PathBuf>,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Predicted mask (NIfTI, or a DICOM-SEG on the ground truth's grid); repeat, paired in
    /// order with --gt.
    #[arg(long, required = true)]
    pred: Vec<PathBuf>,
    /// Ground-truth mask; repeat, paired in order with --pred.
    #[arg(long, required = true)]
    gt: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Drop the predictions' lesions (3D connected components) smaller than ML millilitres
    /// before scoring: what `segment --min-lesion-ml ML` would have dropped, so a filter can be
    /// chosen on unfiltered predictions without segmenting again [default: none dropped].
    #[arg(long, value_name = "ML")]
    min_lesion_ml: Option<f64>,
}

#[derive(Args)]
struct InspectArgs {
    /// An ONNX model, or a DICOM series' folder or file (lists the series found and the
    /// geometry the chosen one would be read with).
    #[arg(value_name = "MODEL_OR_SERIES")]
    model: PathBuf,
    #[command(flatten)]
    series: input::SeriesArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// With `cuda`: translate the model for the GPU and list the operators left on the CPU.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(Args)]
struct CamGraphArgs {
    /// Classifier ONNX model.
    model: PathBuf,
    /// Output ONNX model.
    #[arg(long, short)]
    output: PathBuf,
    /// Tap tensor name; repeat for several [default: the model's ichseg.taps].
    #[arg(long = "tap", value_name = "NAME")]
    taps: Vec<String>,
    /// Logit index to differentiate [default: metadata ichseg.bleed_index, else 1].
    #[arg(long)]
    target: Option<usize>,
    /// Input ROWSxCOLS, for models that fix neither their input size nor ichseg.input_size.
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(usize, usize)>,
    /// Print nothing.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Folder for the demo's outputs.
    #[arg(long, short, default_value = "demo-out")]
    out: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    // Like any Unix filter, end quietly when the reader of our output goes away
    // (`ichseg inspect model.onnx | head`) instead of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(a) => segment(&a),
        Command::PseudoLabel(a) => pseudo::run(&a),
        Command::Ablate(a) => ablate::run(&a),
        Command::Eval(a) => eval(&a),
        Command::Inspect(a) => inspect(&a),
        Command::CamGraph(a) => cam_graph(&a),
        Command::Demo(a) => demo::run(&a.out, &a.run),
        Command::Doctor(a) => doctor::run(&a),
        Command::SkullStrip(a) => strip::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ichseg: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn engine(run: &RunArgs) -> Result<Engine> {
    Engine::new(&EngineOptions {
        threads: run.threads,
        device: run.device,
        memory_limit: run.memory_limit()?,
        low_memory: run.low_memory,
    })
}

impl RunArgs {
    fn memory_limit(&self) -> Result<MemoryLimit> {
        MemoryLimit::from_mib(self.memory_limit_mb)
            .ok_or_else(|| Error::arg(format!("--memory-limit-mb {} is too large", self.memory_limit_mb)))
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal and not `--quiet`.
fn progress_bar(quiet: bool, label: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} slices ({elapsed}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// What one `segment` run produced, for the summary and the demo.
struct SegmentOutcome {
    result: ichseg::Segmentation,
    report: report::SegmentationReport,
}

fn run_segmentation(
    inputs: &[PathBuf],
    series: &input::SeriesArgs,
    model_path: &Path,
    options: &SegmenterOptions,
    run: &RunArgs,
    outputs: (&Path, Option<&Path>, Option<&Path>, Option<&Path>),
) -> Result<SegmentOutcome> {
    let (mask_path, prob_path, report_path, overlay_path) = outputs;
    input::check_outputs(inputs, &[Some(mask_path), prob_path])?;
    overlay::check_path(overlay_path, "--overlay")?;
    let image = input::load(inputs, series, run.memory_limit()?)?;
    let t_load = Instant::now();
    let model = OnnxModel::load(model_path)?;
    let algorithm = ichseg::io::dicom::seg::Algorithm {
        name: model_path.file_stem().map_or_else(|| model.name.clone(), |s| s.to_string_lossy().into_owned()),
        trained_on: model.metadata.trained_on.clone(),
    };
    let segmenter = Segmenter::new(&engine(run)?, model, options)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let bar = progress_bar(run.quiet, "segmenting");
    let result = segmenter.segment_with_progress(&image.volume, &mut |p: Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        true
    })?;
    bar.finish_and_clear();
    image.write_mask(mask_path, &result.mask, &algorithm)?;
    if let Some(p) = prob_path {
        image.write_probability(p, &result.probability, &algorithm)?;
    }
    let name: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let report = report::SegmentationReport::new(&name.join(" "), &image.volume, &segmenter, &result, load_s);
    if let Some(r) = report_path {
        report::write_json(r, &report)?;
    }
    if let Some(o) = overlay_path {
        let v = &image.volume;
        let img = overlay::render(v.data(), &result.mask, v.spacing(), &v.affine(), &result.lesions);
        overlay::write_png(o, &img)?;
    }
    Ok(SegmentOutcome { result, report })
}

fn segment(a: &SegmentArgs) -> Result<()> {
    let outcome = run_segmentation(
        &a.inputs,
        &a.series,
        &a.model,
        &a.model_args.options(),
        &a.run,
        (&a.output, a.prob.as_deref(), a.report.as_deref(), a.overlay.as_deref()),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report).map_err(|e| Error::arg(e.to_string()))?);
    } else if !a.run.quiet {
        print_summary(&outcome.report);
    }
    Ok(())
}

fn print_summary(r: &report::SegmentationReport) {
    let c: &SegmenterConfig = &r.model.config;
    println!("summary   {}", r.summary);
    println!(
        "input     {} ({}x{}x{} voxels, {:.3}x{:.3}x{:.3} mm)",
        r.input, r.dims[0], r.dims[1], r.dims[2], r.spacing_mm[0], r.spacing_mm[1], r.spacing_mm[2]
    );
    println!(
        "model     {} (input {}x{}x{}, window {}/{}, threshold {})",
        r.model.name, c.channels, c.input_rows, c.input_cols, c.window_level, c.window_width, c.threshold
    );
    if c.min_lesion_ml > 0.0 {
        let from = if c.min_lesion_ml_source.starts_with("model") {
            " (the model's ichseg.segment.min_lesion_ml)"
        } else {
            ""
        };
        println!("filter    lesions < {} mL dropped{from}", c.min_lesion_ml);
    }
    println!("device    {} x{} threads ({})", r.device, r.threads, r.device_note);
    println!("lesions   {}  total {:.2} mL (ABC/2 {:.2} mL)", r.lesion_count, r.total_volume_ml, r.total_abc2_ml);
    if r.lesion_count > 0 && !r.midline.found {
        println!("midline   not found: {}", r.midline.reason.as_deref().unwrap_or(""));
    }
    for rl in &r.lesions {
        let (l, f) = (&rl.lesion, &rl.findings);
        println!(
            "  #{:<3} {:>8.2} mL (ABC/2 {:.2}) {:>8} voxels  slices {}-{}  centroid ({:.1}, {:.1}, {:.1}) mm  \
             {}  HU mean {:.0} median {:.0} max {:.0}{}{}",
            l.id,
            l.volume_ml,
            f.abc2_ml,
            l.voxels,
            l.first_slice,
            l.last_slice,
            l.centroid_world_mm[0],
            l.centroid_world_mm[1],
            l.centroid_world_mm[2],
            format!("{:?}", f.side).to_lowercase(),
            f.density.mean_hu,
            f.density.median_hu,
            f.density.max_hu,
            if f.flags.ge_30_ml { "  >= 30 mL" } else { "" },
            if f.flags.touches_inner_table { "  touches the inner table" } else { "" },
        );
    }
    let t = &r.timings;
    println!(
        "time      load {:.2} s, preprocess {:.2} s, inference {:.2} s, postprocess {:.2} s (findings {:.2} s), total {:.2} s",
        t.load_s,
        t.segment.preprocess_s,
        t.segment.inference_s,
        t.segment.postprocess_s,
        t.segment.findings_s,
        t.segment.total_s
    );
}

fn eval(a: &EvalArgs) -> Result<()> {
    if a.pred.len() != a.gt.len() {
        return Err(Error::arg(format!("{} --pred but {} --gt: give them in pairs", a.pred.len(), a.gt.len())));
    }
    let mut masks = Vec::new();
    let mut voxel_ml = Vec::new();
    for (p, g) in a.pred.iter().zip(&a.gt) {
        let (gh, gm) = nifti::read_mask(g)?;
        let mut pm = input::read_mask_like(p, &gh, g)?;
        if let Some(ml) = a.min_lesion_ml {
            ichseg::lesions::remove_small_lesions(&mut pm, gh.spacing(), ml)?;
        }
        masks.push((pm, gm));
        voxel_ml.push(gh.spacing().iter().product::<f64>() / 1000.0);
    }
    let views: Vec<_> = masks.iter().map(|(p, g)| (p.view(), g.view())).collect();
    let evaluation = ichseg::metrics::evaluate_sized(&views, &voxel_ml)?;
    if a.json {
        let per_volume: Vec<_> = a
            .pred
            .iter()
            .zip(&a.gt)
            .zip(&evaluation.per_volume)
            .map(|((p, g), s)| serde_json::json!({"pred": p, "gt": g, "scores": s}))
            .collect();
        let out = serde_json::json!({"overall": evaluation.overall, "per_volume": per_volume});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::arg(e.to_string()))?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("    n/a".to_string(), |v| format!("{:>7.2}", 100.0 * v));
    println!(
        "{:<32} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "volume", "IoU_bg", "IoU_h", "mIoU", "Dice", "CL", "ML", "FPL"
    );
    let row = |name: &str, s: &ichseg::metrics::Scores| {
        println!(
            "{:<32} {} {} {} {} {} {} {}",
            name,
            pct(Some(s.iou_background)),
            pct(Some(s.iou_hemorrhage)),
            pct(Some(s.miou)),
            pct(Some(s.dice)),
            pct(s.cl),
            pct(s.ml),
            pct(s.fpl)
        )
    };
    for (p, s) in a.pred.iter().zip(&evaluation.per_volume) {
        row(&p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), s);
    }
    row(&format!("ALL ({} volumes)", a.pred.len()), &evaluation.overall);
    println!("(percent; dataset-level IoU over all slices; CL/ML/FPL from 2D 8-connected sites, n/a when undefined)");
    if let Some(bins) = &evaluation.overall.by_size {
        println!("\nby lesion size (all volumes; each site in the bin of its 3D lesion's volume)");
        println!("{:<14} {:>7} {:>9} {:>7} {:>9}", "lesion", "CL", "GT sites", "FPL", "predicted");
        for b in bins {
            let range = match b.max_ml {
                Some(max) if b.min_ml == 0.0 => format!("< {max} mL"),
                Some(max) => format!("{}-{max} mL", b.min_ml),
                None => format!(">= {} mL", b.min_ml),
            };
            println!("{:<14} {} {:>9} {} {:>9}", range, pct(b.cl), b.n_gt_sites, pct(b.fpl), b.n_pred_sites);
        }
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<()> {
    if ichseg::io::dicom::is_dicom_input(&a.model) {
        return inspect_series(a);
    }
    let model = OnnxModel::load(&a.model)?;
    let is_classifier = model.metadata.kind == Some(ichseg::ModelKind::Classifier)
        || model.outputs.first().and_then(|o| o.shape.as_ref()).is_some_and(|s| s.len() == 2);
    let input = model.inputs.first();
    let channels = input.and_then(|i| i.fixed_dim(1)).or(model.metadata.channels).unwrap_or(1);
    let (rows, cols) = match (input.and_then(|i| i.fixed_dim(2)), input.and_then(|i| i.fixed_dim(3))) {
        (Some(r), Some(c)) => (r, c),
        _ => model.metadata.input_size.unwrap_or(ichseg::pipeline::options::DEFAULT_INPUT_SIZE),
    };
    let taps = if is_classifier { model.tap_candidates(channels, rows, cols)? } else { vec![] };
    let placement = match a.device {
        Device::Cpu => None,
        Device::Cuda(0) | Device::Auto => {
            Some(ichseg::model::runtime::cuda_placement(&model, [1, channels, rows, cols])?)
        }
        Device::Cuda(n) => return Err(Error::arg(format!("tract-cuda drives device 0 only, not {n}"))),
    };
    if a.json {
        let out = serde_json::json!({
            "name": model.name, "producer": model.producer, "opset": model.opset,
            "inputs": model.inputs, "outputs": model.outputs, "metadata": model.metadata.raw,
            "classifier": is_classifier, "tap_candidates": taps, "tap_input": [1, channels, rows, cols],
            "cuda_placement": placement,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::arg(e.to_string()))?);
        return Ok(());
    }
    println!(
        "model     {} (producer {}, opset {})",
        model.name,
        model.producer,
        model.opset.map_or("?".into(), |o| o.to_string())
    );
    for (what, list) in [("input ", &model.inputs), ("output", &model.outputs)] {
        for t in list.iter() {
            println!("{what}    {:<40} {:<8} {}", t.name, t.elem_type, t.shape_text());
        }
    }
    if model.metadata.raw.is_empty() {
        println!("metadata  (no ichseg.* keys: defaults apply, see `ichseg segment --help`)");
    }
    for (k, v) in &model.metadata.raw {
        println!("metadata  {k} = {v}");
    }
    if is_classifier {
        println!("candidate taps for a [1, {channels}, {rows}, {cols}] input (tensor, op, shape, stride):");
        for t in &taps {
            println!("  {:<56} {:<12} {:?} x{}", t.tensor, t.op, t.shape, t.stride);
        }
    }
    if let Some(p) = placement {
        println!(
            "cuda      {} operators on the GPU, {} left on the CPU, {} host/device copies",
            p.gpu_ops,
            p.cpu_ops.len(),
            p.transfers
        );
        for (node, op) in &p.cpu_ops {
            println!("  on CPU  {node:<56} {op}");
        }
    }
    Ok(())
}

fn inspect_series(a: &InspectArgs) -> Result<()> {
    use ichseg::io::dicom;
    let inputs = std::slice::from_ref(&a.model);
    let found = dicom::list_series(inputs)?;
    let options = dicom::ReadOptions {
        series_uid: a.series.series.clone(),
        allow_non_ct: a.series.allow_non_ct,
        memory_limit: MemoryLimit::NONE,
    };
    let read = dicom::read_series(inputs, &options);
    if a.json {
        let chosen = read.as_ref().map_err(|e| e.to_string()).map(|r| {
            serde_json::json!({
                "series": r.series, "dims": r.volume.dims(), "spacing_mm": r.volume.spacing(),
                "affine_ras": r.volume.affine(),
                "files_in_order": r.source.instances.iter().map(|i| &i.path).collect::<Vec<_>>(),
            })
        });
        let out = match chosen {
            Ok(c) => serde_json::json!({"found": found, "read": c}),
            Err(e) => serde_json::json!({"found": found, "error": e}),
        };
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::arg(e.to_string()))?);
        return read.map(|_| ());
    }
    for s in &found {
        println!("series    {s}");
    }
    let r = read?;
    let [nx, ny, nz] = r.volume.dims();
    let [sx, sy, sz] = r.volume.spacing();
    println!("reads     {}", r.series.uid);
    println!("grid      {nx}x{ny}x{nz} voxels, {sx:.4}x{sy:.4}x{sz:.4} mm (columns x rows x slices)");
    for (label, row) in ["x (R)", "y (A)", "z (S)"].iter().zip(r.volume.affine().iter()) {
        println!("affine    {label:<6} {:>10.4} {:>10.4} {:>10.4} {:>10.4}", row[0], row[1], row[2], row[3]);
    }
    let first = &r.source.instances[0];
    let last = &r.source.instances[nz - 1];
    println!("slice 0   {} at {:?} (LPS mm)", first.path.display(), first.position);
    println!("slice {:<3} {} at {:?} (LPS mm)", nz - 1, last.path.display(), last.position);
    Ok(())
}

fn cam_graph(a: &CamGraphArgs) -> Result<()> {
    let bytes = std::fs::read(&a.model).map_err(|e| Error::io(&a.model, e))?;
    let model = OnnxModel::load(&a.model)?;
    let target = a.target.or(model.metadata.bleed_index).unwrap_or(1);
    let options = GradientOptions { target, taps: a.taps.clone(), input_size: a.input_size, ..Default::default() };
    let graph = GradientGraph::build(&bytes, &a.model.display().to_string(), &options)?;
    graph.save(&a.output)?;
    if !a.quiet {
        let [_, c, h, w] = graph.input_shape;
        println!("wrote     {} (target logit {target}, input [N, {c}, {h}, {w}])", a.output.display());
        println!("output 0  {}", model.outputs.first().map_or("logits", |o| o.name.as_str()));
        for (i, tap) in graph.taps.iter().enumerate() {
            println!("output {}  {tap}", GradientGraph::activation_output(i));
            println!("output {}  {}", GradientGraph::gradient_output(i), onnx_grad::grad_name(tap));
        }
    }
    Ok(())
}

fn parse_pair(s: &str) -> std::result::Result<(f32, f32), String> {
    let (a, b) = s.split_once(',').ok_or("expected two numbers A,B")?;
    let a: f32 = a.trim().parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: f32 = b.trim().parse().map_err(|_| format!("{b:?} is not a number"))?;
    Ok((a, b))
}

fn parse_window(s: &str) -> std::result::Result<Window, String> {
    let (level, width) = parse_pair(s)?;
    Ok(Window { level, width })
}

fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (r, c) = s.split_once('x').ok_or("expected ROWSxCOLS such as 384x384")?;
    let r = r.trim().parse().map_err(|_| format!("{r:?} is not a size"))?;
    let c = c.trim().parse().map_err(|_| format!("{c:?} is not a size"))?;
    Ok((r, c))
}
