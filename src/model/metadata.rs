//! The `ichseg.*` keys of an ONNX model's `metadata_props` (METHOD.md section 8).
//! Every key is optional; API and CLI options override what the model says.

use crate::error::{Error, Result};
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
    /// Logit index of the bleed class.
    pub bleed_index: Option<usize>,
    /// `(layer name, tensor name)` pairs, in the order given.
    pub taps: Vec<(String, String)>,
    pub deep_tap: Option<String>,
    pub trained_on: Option<String>,
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
                _ => {} // unknown keys are kept in `raw` for display, not an error: newer models may add keys
            }
        }
        Ok(m)
    }
}

fn parse_positive(s: &str) -> Option<usize> {
    s.trim().parse().ok().filter(|&v| v > 0)
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
            ("producer", "ignored"),
        ])
        .unwrap();
        assert_eq!(m.kind, Some(ModelKind::Classifier));
        assert_eq!(m.input_size, Some((384, 256)));
        assert_eq!(m.channels, Some(3));
        assert_eq!(m.window, Some(Window { level: 40.0, width: 80.0 }));
        assert_eq!(m.normalize, Some((0.5, 0.25)));
        assert_eq!(m.taps[1], ("layer2".to_string(), "/l2/Relu_output_0".to_string()));
        assert_eq!(m.raw.len(), 8);
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
        ] {
            let err = ModelMetadata::parse([(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
    }
}
