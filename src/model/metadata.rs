//! The `ichseg.*` keys of an ONNX model's `metadata_props` (METHOD.md section 8).
//! Every key is optional; API and CLI options override what the model says.

use crate::error::{Error, Result};
use crate::skull::intracranial::{check_margin_mm, MAX_MARGIN_MM};
use crate::volume::Window;
use std::collections::BTreeMap;

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Slice classifier (bleed / no bleed), source of CAMs.
    Classifier,
    /// U-Net producing per-pixel bleed logits.
    Segmenter,
}

/// The pseudo-labelling settings a classifier was tuned with: `ichseg.pseudo.threshold`,
/// `ichseg.pseudo.intracranial_margin_mm`, `ichseg.pseudo.max_hu` and `ichseg.pseudo.min_hu`
/// (a number, or `off`), `ichseg.pseudo.min_lesion_ml`, and the dense CRF's `ichseg.pseudo.crf_confidence` (the
/// unary's label confidence) and `ichseg.pseudo.crf_bilateral_compat` (the appearance kernel's
/// Potts weight). `None`: the model does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PseudoDefaults {
    pub threshold: Option<f32>,
    /// `Some(None)`: the model says off.
    pub intracranial_margin_mm: Option<Option<f64>>,
    /// `Some(None)`: the model says off.
    pub max_hu: Option<Option<f32>>,
    /// `Some(None)`: the model says off.
    pub min_hu: Option<Option<f32>>,
    pub min_lesion_ml: Option<f64>,
    /// In (0, 1) exclusive.
    pub crf_confidence: Option<f32>,
    /// Finite and > 0.
    pub crf_bilateral_compat: Option<f32>,
}

/// The parsed `ichseg.*` metadata of a model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ModelMetadata {
    pub kind: Option<ModelKind>,
    /// `(rows, cols)` the network expects (`ichseg.input_size = "384x384"`: rows x cols).
    pub input_size: Option<(usize, usize)>,
    /// 1, or 3 for the windowed slice repeated.
    pub channels: Option<usize>,
    pub window: Option<Window>,
    /// `(mean, std)` applied after windowing.
    pub normalize: Option<(f32, f32)>,
    /// `ichseg.skull_strip_mm`: the model was trained on CTs with air (-1000 HU) outside the
    /// intracranial mask eroded by this margin (mm), so its inputs get the same
    /// ([`crate::skull::intracranial::strip_outside`]). Part of the input contract like the
    /// window: applied under every preset.
    pub skull_strip_mm: Option<f64>,
    /// Logit index of the bleed class.
    pub bleed_index: Option<usize>,
    /// `(layer name, tensor name)` pairs, in the order given.
    pub taps: Vec<(String, String)>,
    pub deep_tap: Option<String>,
    pub trained_on: Option<String>,
    /// A classifier's tuned pseudo-labelling settings (`ichseg.pseudo.*`), which
    /// [`crate::PseudoLabeler`] applies unless the caller sets them.
    pub pseudo: PseudoDefaults,
    /// `ichseg.segment.min_lesion_ml`: a segmenter's tuned small-lesion filter (mL, >= 0), which
    /// [`crate::Segmenter`] applies unless the caller sets one.
    pub segment_min_lesion_ml: Option<f64>,
    /// Every `ichseg.*` key as written in the file, for display.
    pub raw: BTreeMap<String, String>,
}

impl ModelMetadata {
    /// Parses the `ichseg.*` entries out of all metadata properties; other keys are ignored.
    pub fn parse<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut m = ModelMetadata::default();
        for (key, value) in props {
            let Some(name) = key.strip_prefix("ichseg.") else { continue };
            m.raw.insert(key.to_string(), value.to_string());
            let value = value.trim();
            let bad = |expected: &str| Error::InvalidModel(format!("metadata {key} = {value:?}: expected {expected}"));
            match name {
                "kind" => {
                    m.kind = Some(match value {
                        "classifier" => ModelKind::Classifier,
                        "segmenter" => ModelKind::Segmenter,
                        _ => return Err(bad("classifier or segmenter")),
                    })
                }
                "input_size" => {
                    let (r, c) = value.split_once('x').ok_or_else(|| bad("ROWSxCOLS such as 384x384"))?;
                    let r = parse_positive(r).ok_or_else(|| bad("ROWSxCOLS such as 384x384"))?;
                    let c = parse_positive(c).ok_or_else(|| bad("ROWSxCOLS such as 384x384"))?;
                    m.input_size = Some((r, c));
                }
                "channels" => {
                    m.channels = Some(match value {
                        "1" => 1,
                        "3" => 3,
                        _ => return Err(bad("1 or 3")),
                    })
                }
                "window" => {
                    let (l, w) = parse_pair(value).ok_or_else(|| bad("LEVEL,WIDTH in HU such as 50,130"))?;
                    if w <= 0.0 {
                        return Err(bad("a positive window width"));
                    }
                    m.window = Some(Window { level: l, width: w });
                }
                "normalize" => {
                    let (mean, std) = parse_pair(value).ok_or_else(|| bad("MEAN,STD such as 0.5,0.25"))?;
                    if std <= 0.0 {
                        return Err(bad("a positive standard deviation"));
                    }
                    m.normalize = Some((mean, std));
                }
                "skull_strip_mm" => {
                    let margin = parse_finite(value).filter(|&mm| check_margin_mm(mm).is_ok());
                    m.skull_strip_mm =
                        Some(margin.ok_or_else(|| bad(&format!("a margin in mm, 0 to {MAX_MARGIN_MM}")))?)
                }
                "bleed_index" => m.bleed_index = Some(value.parse().map_err(|_| bad("a logit index such as 1"))?),
                "taps" => {
                    for pair in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let (n, t) =
                            pair.split_once('=').ok_or_else(|| bad("name=tensor pairs separated by commas"))?;
                        m.taps.push((n.trim().to_string(), t.trim().to_string()));
                    }
                }
                "deep_tap" => m.deep_tap = Some(value.to_string()),
                "trained_on" => m.trained_on = Some(value.to_string()),
                "pseudo.threshold" => {
                    let t = parse_finite(value).filter(|t| (0.0..=1.0).contains(t));
                    m.pseudo.threshold = Some(t.ok_or_else(|| bad("a threshold in [0, 1]"))? as f32)
                }
                "pseudo.intracranial_margin_mm" => {
                    let margin = parse_or_off(value).filter(|m| m.is_none_or(|m| m >= 0.0));
                    m.pseudo.intracranial_margin_mm = Some(margin.ok_or_else(|| bad("a margin in mm (>= 0), or off"))?)
                }
                "pseudo.max_hu" | "pseudo.min_hu" => {
                    let hu = parse_or_off(value).ok_or_else(|| bad("a CT value in HU, or off"))?.map(|h| h as f32);
                    *(if name == "pseudo.max_hu" { &mut m.pseudo.max_hu } else { &mut m.pseudo.min_hu }) = Some(hu)
                }
                "pseudo.min_lesion_ml" => m.pseudo.min_lesion_ml = Some(parse_ml(value).ok_or_else(|| bad(ML))?),
                "segment.min_lesion_ml" => m.segment_min_lesion_ml = Some(parse_ml(value).ok_or_else(|| bad(ML))?),
                "pseudo.crf_confidence" => {
                    let c = parse_finite(value).map(|c| c as f32).filter(|c| *c > 0.0 && *c < 1.0);
                    m.pseudo.crf_confidence = Some(c.ok_or_else(|| bad("a label confidence in (0, 1)"))?)
                }
                "pseudo.crf_bilateral_compat" => {
                    let w = parse_finite(value).map(|w| w as f32).filter(|w| w.is_finite() && *w > 0.0);
                    m.pseudo.crf_bilateral_compat = Some(w.ok_or_else(|| bad("a finite Potts weight > 0"))?)
                }
                _ => {} // unknown keys are kept in `raw` for display, not an error: newer models may add keys
            }
        }
        Ok(m)
    }
}

const ML: &str = "a volume in mL, >= 0";

fn parse_ml(s: &str) -> Option<f64> {
    parse_finite(s).filter(|v| *v >= 0.0)
}

fn parse_positive(s: &str) -> Option<usize> {
    s.trim().parse().ok().filter(|&v| v > 0)
}

fn parse_finite(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A finite number, or `off` (`Some(None)`).
fn parse_or_off(s: &str) -> Option<Option<f64>> {
    if s.trim().eq_ignore_ascii_case("off") {
        Some(None)
    } else {
        parse_finite(s).map(Some)
    }
}

fn parse_pair(s: &str) -> Option<(f32, f32)> {
    let (a, b) = s.split_once(',')?;
    let a: f32 = a.trim().parse().ok()?;
    let b: f32 = b.trim().parse().ok()?;
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys() {
        let m = ModelMetadata::parse([
            ("ichseg.kind", "classifier"),
            ("ichseg.input_size", "384x256"),
            ("ichseg.channels", "3"),
            ("ichseg.window", "40, 80"),
            ("ichseg.normalize", "0.5,0.25"),
            ("ichseg.bleed_index", "1"),
            ("ichseg.taps", "layer1=/l1/Relu_output_0,layer2=/l2/Relu_output_0"),
            ("ichseg.deep_tap", "/l4/Relu_output_0"),
            ("ichseg.skull_strip_mm", "0"),
            ("producer", "ignored"),
        ])
        .unwrap();
        assert_eq!(m.kind, Some(ModelKind::Classifier));
        assert_eq!(m.input_size, Some((384, 256)));
        assert_eq!(m.channels, Some(3));
        assert_eq!(m.window, Some(Window { level: 40.0, width: 80.0 }));
        assert_eq!(m.normalize, Some((0.5, 0.25)));
        assert_eq!(m.taps[1], ("layer2".to_string(), "/l2/Relu_output_0".to_string()));
        assert_eq!(m.skull_strip_mm, Some(0.0));
        assert_eq!(m.raw.len(), 9);
        assert_eq!(m.pseudo, PseudoDefaults::default(), "no ichseg.pseudo.* keys: nothing tuned");
    }

    #[test]
    fn parses_tuned_pseudo_settings() {
        let m = ModelMetadata::parse([
            ("ichseg.pseudo.threshold", "0.25"),
            ("ichseg.pseudo.intracranial_margin_mm", "off"),
            ("ichseg.pseudo.max_hu", " 100 "),
            ("ichseg.pseudo.min_hu", "42"),
            ("ichseg.pseudo.min_lesion_ml", "0.1"),
            ("ichseg.pseudo.crf_confidence", "0.9"),
            ("ichseg.pseudo.crf_bilateral_compat", "3"),
            ("ichseg.segment.min_lesion_ml", "1"),
        ])
        .unwrap();
        assert_eq!(m.pseudo.threshold, Some(0.25));
        assert_eq!(m.pseudo.intracranial_margin_mm, Some(None));
        assert_eq!(m.pseudo.max_hu, Some(Some(100.0)));
        assert_eq!(m.pseudo.min_hu, Some(Some(42.0)));
        assert_eq!(m.pseudo.min_lesion_ml, Some(0.1));
        assert_eq!((m.pseudo.crf_confidence, m.pseudo.crf_bilateral_compat), (Some(0.9), Some(3.0)));
        assert_eq!(m.segment_min_lesion_ml, Some(1.0));
    }

    #[test]
    fn malformed_values_name_the_key() {
        for (k, v) in [
            ("ichseg.input_size", "384"),
            ("ichseg.input_size", "0x384"),
            ("ichseg.channels", "2"),
            ("ichseg.window", "50"),
            ("ichseg.window", "50,-3"),
            ("ichseg.normalize", "a,b"),
            ("ichseg.kind", "detector"),
            ("ichseg.taps", "layer1"),
            ("ichseg.pseudo.threshold", "1.5"),
            ("ichseg.pseudo.threshold", "off"),
            ("ichseg.pseudo.max_hu", "NaN"),
            ("ichseg.pseudo.min_hu", "inf"),
            ("ichseg.pseudo.min_lesion_ml", "-1"),
            ("ichseg.segment.min_lesion_ml", "-0.5"),
            ("ichseg.segment.min_lesion_ml", "inf"),
            ("ichseg.pseudo.intracranial_margin_mm", "wide"),
            ("ichseg.pseudo.crf_confidence", "1"),
            ("ichseg.pseudo.crf_confidence", "0"),
            ("ichseg.pseudo.crf_bilateral_compat", "0"),
            ("ichseg.pseudo.crf_bilateral_compat", "1e300"),
            ("ichseg.skull_strip_mm", "-1"),
            ("ichseg.skull_strip_mm", "off"),
            ("ichseg.skull_strip_mm", "51"),
        ] {
            let err = ModelMetadata::parse([(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
    }
}
