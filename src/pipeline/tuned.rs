//! The pseudo-labelling settings a classifier can carry tuned in its metadata
//! (`ichseg.pseudo.*`, [`PseudoDefaults`]): the BLA threshold, the intracranial mask's margin,
//! the bone cut, the blood-density cut, the small-lesion filter and the dense CRF's label confidence and bilateral
//! weight. Each is resolved once, when a
//! [`crate::PseudoLabeler`] is made: the caller's choice wins, then (with [`Preset::Model`]) the
//! classifiers' metadata, then METHOD.md's default; the result remembers where it came from, for
//! the report.

use crate::crf::CrfParams;
use crate::error::{Error, Result};
use crate::model::PseudoDefaults;
use crate::sca::DEFAULT_THRESHOLD;

/// A caller's choice for one tuned setting.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Tuned<T> {
    /// The classifiers' metadata (with [`Preset::Model`]), else METHOD.md's default.
    #[default]
    Auto,
    /// Off, whatever the metadata says (the optional steps; the threshold and the CRF's
    /// settings cannot be off: the CRF itself is switched by [`crate::PseudoOptions::crf`]).
    Off,
    /// This value.
    Set(T),
}

impl<T> Tuned<T> {
    /// `Some(v)` as [`Tuned::Set`], `None` as [`Tuned::Off`].
    pub fn from_option(v: Option<T>) -> Self {
        v.map_or(Tuned::Off, Tuned::Set)
    }
}

/// What [`Tuned::Auto`] settings follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The classifiers' `ichseg.pseudo.*` metadata where they have it, else METHOD.md's defaults.
    #[default]
    Model,
    /// METHOD.md exactly: the metadata is ignored (threshold 0.2, the CRF's label confidence 0.7
    /// and bilateral weight 10; no intracranial mask, bone cut or small-lesion filter).
    Paper,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "model" => Ok(Preset::Model),
            "paper" => Ok(Preset::Paper),
            _ => Err(Error::arg(format!("preset {s:?}: expected model or paper"))),
        }
    }
}

/// One resolved setting: its value (`None`: the step is off) and where it came from:
/// `"option"` (the caller), `"model: NAME, ..."` (the classifiers' metadata) or `"default"`
/// (METHOD.md's; also every setting of [`Preset::Paper`] the caller left to it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Setting<T> {
    pub value: Option<T>,
    pub source: String,
}

/// The tuned settings a labeller runs with.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TunedSettings {
    pub preset: Preset,
    pub threshold: Setting<f32>,
    pub intracranial_margin_mm: Setting<f64>,
    pub max_hu: Setting<f32>,
    pub min_hu: Setting<f32>,
    pub min_lesion_ml: Setting<f64>,
    pub crf_confidence: Setting<f32>,
    pub crf_bilateral_compat: Setting<f32>,
}

/// The caller's choices.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TunedChoices {
    pub preset: Preset,
    pub threshold: Tuned<f32>,
    pub intracranial_margin_mm: Tuned<f64>,
    pub max_hu: Tuned<f32>,
    pub min_hu: Tuned<f32>,
    pub min_lesion_ml: Tuned<f64>,
    pub crf_confidence: Tuned<f32>,
    pub crf_bilateral_compat: Tuned<f32>,
}

impl TunedSettings {
    /// Resolves `choices` against the classifiers' metadata (name, tuned defaults), in order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the threshold or a CRF setting is [`Tuned::Off`], or when
    /// classifiers' metadata disagree on a setting the caller left to them (naming both values).
    pub fn resolve(choices: &TunedChoices, models: &[(String, PseudoDefaults)]) -> Result<Self> {
        let preset = choices.preset;
        let crf = CrfParams::default();
        // The settings that always have a value: `default` when neither the caller nor the models say.
        let always = |key: &str, what: &str, choice: Tuned<f32>, from: fn(&PseudoDefaults) -> Option<f32>, default| {
            if choice == Tuned::Off {
                return Err(Error::arg(format!("{what} cannot be off; give a value")));
            }
            let s = resolve(key, choice, preset, models, |d| from(d).map(Some))?;
            Ok(Setting { value: s.value.or(Some(default)), source: s.source })
        };
        Ok(TunedSettings {
            preset,
            threshold: always("threshold", "the BLA threshold", choices.threshold, |d| d.threshold, DEFAULT_THRESHOLD)?,
            intracranial_margin_mm: resolve(
                "intracranial_margin_mm",
                choices.intracranial_margin_mm,
                preset,
                models,
                |d| d.intracranial_margin_mm,
            )?,
            max_hu: resolve("max_hu", choices.max_hu, preset, models, |d| d.max_hu)?,
            min_hu: resolve("min_hu", choices.min_hu, preset, models, |d| d.min_hu)?,
            min_lesion_ml: resolve("min_lesion_ml", choices.min_lesion_ml, preset, models, |d| {
                d.min_lesion_ml.map(|ml| (ml > 0.0).then_some(ml))
            })?,
            crf_confidence: always(
                "crf_confidence",
                "the CRF's label confidence",
                choices.crf_confidence,
                |d| d.crf_confidence,
                crf.label_confidence,
            )?,
            crf_bilateral_compat: always(
                "crf_bilateral_compat",
                "the CRF's bilateral weight",
                choices.crf_bilateral_compat,
                |d| d.crf_bilateral_compat,
                crf.bilateral_compat,
            )?,
        })
    }

    /// The threshold in use.
    pub fn threshold(&self) -> f32 {
        self.threshold.value.unwrap_or(DEFAULT_THRESHOLD)
    }

    /// `base` with the resolved label confidence and bilateral weight.
    pub fn crf(&self, base: &CrfParams) -> CrfParams {
        CrfParams {
            label_confidence: self.crf_confidence.value.unwrap_or(base.label_confidence),
            bilateral_compat: self.crf_bilateral_compat.value.unwrap_or(base.bilateral_compat),
            ..base.clone()
        }
    }
}

/// One setting: the caller's, else the metadata's (`Some(None)` there: off), else off/default.
fn resolve<T: Copy + PartialEq + std::fmt::Display>(
    key: &str,
    choice: Tuned<T>,
    preset: Preset,
    models: &[(String, PseudoDefaults)],
    from: impl Fn(&PseudoDefaults) -> Option<Option<T>>,
) -> Result<Setting<T>> {
    let option = |value| Ok(Setting { value, source: "option".into() });
    match choice {
        Tuned::Set(v) => return option(Some(v)),
        Tuned::Off => return option(None),
        Tuned::Auto => {}
    }
    let default = Setting { value: None, source: "default".into() };
    if preset == Preset::Paper {
        return Ok(default);
    }
    let said: Vec<(&str, Option<T>)> = models.iter().filter_map(|(name, d)| Some((name.as_str(), from(d)?))).collect();
    let Some(&(first_name, value)) = said.first() else { return Ok(default) };
    if let Some(&(other, v)) = said.iter().find(|(_, v)| *v != value) {
        let show = |v: Option<T>| v.map_or("off".to_string(), |v| v.to_string());
        return Err(Error::arg(format!(
            "the classifiers disagree on ichseg.pseudo.{key}: {first_name} says {}, {other} says {}; set it explicitly",
            show(value),
            show(v)
        )));
    }
    let names: Vec<&str> = said.iter().map(|(n, _)| *n).collect();
    Ok(Setting { value, source: format!("model: {}", names.join(", ")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned(threshold: Option<f32>, max_hu: Option<Option<f32>>) -> PseudoDefaults {
        PseudoDefaults {
            threshold,
            max_hu,
            min_hu: Some(Some(42.0)),
            min_lesion_ml: Some(0.1),
            crf_confidence: Some(0.9),
            ..Default::default()
        }
    }

    #[test]
    fn the_caller_then_the_model_then_the_default() {
        let models =
            [("a.onnx".to_string(), tuned(Some(0.3), Some(Some(100.0)))), ("b.onnx".into(), tuned(None, None))];
        let s = TunedSettings::resolve(&TunedChoices::default(), &models).unwrap();
        assert_eq!(s.threshold, Setting { value: Some(0.3), source: "model: a.onnx".into() });
        assert_eq!(s.max_hu.value, Some(100.0));
        assert_eq!(s.min_hu, Setting { value: Some(42.0), source: "model: a.onnx, b.onnx".into() });
        assert_eq!(s.min_lesion_ml, Setting { value: Some(0.1), source: "model: a.onnx, b.onnx".into() });
        assert_eq!(s.intracranial_margin_mm, Setting { value: None, source: "default".into() });
        assert_eq!(s.crf_confidence, Setting { value: Some(0.9), source: "model: a.onnx, b.onnx".into() });
        assert_eq!(s.crf_bilateral_compat, Setting { value: Some(10.0), source: "default".into() });
        let crf = s.crf(&CrfParams::default());
        assert_eq!((crf.label_confidence, crf.bilateral_compat), (0.9, 10.0));

        let choices = TunedChoices {
            threshold: Tuned::Set(0.5),
            max_hu: Tuned::Off,
            min_hu: Tuned::Set(40.0),
            crf_confidence: Tuned::Set(0.7),
            ..Default::default()
        };
        let s = TunedSettings::resolve(&choices, &models).unwrap();
        assert_eq!(s.crf_confidence, Setting { value: Some(0.7), source: "option".into() });
        assert_eq!(s.threshold, Setting { value: Some(0.5), source: "option".into() });
        assert_eq!(s.max_hu, Setting { value: None, source: "option".into() });
        assert_eq!(s.min_hu, Setting { value: Some(40.0), source: "option".into() });

        let paper = TunedChoices { preset: Preset::Paper, ..Default::default() };
        let s = TunedSettings::resolve(&paper, &models).unwrap();
        assert_eq!((s.threshold(), s.max_hu.value, s.min_lesion_ml.value), (DEFAULT_THRESHOLD, None, None));
        assert!(s.threshold.source == "default" && s.max_hu.source == "default");
        assert_eq!(s.min_hu, Setting { value: None, source: "default".into() });
        assert_eq!(s.crf_confidence, Setting { value: Some(0.7), source: "default".into() });
    }

    #[test]
    fn disagreeing_models_and_an_off_threshold_are_refused() {
        let models = [("a.onnx".to_string(), tuned(Some(0.3), None)), ("b.onnx".into(), tuned(Some(0.4), None))];
        let e = TunedSettings::resolve(&TunedChoices::default(), &models).unwrap_err().to_string();
        assert!(e.contains("a.onnx says 0.3") && e.contains("b.onnx says 0.4"), "{e}");
        let set = TunedChoices { threshold: Tuned::Set(0.3), ..Default::default() };
        assert!(TunedSettings::resolve(&set, &models).is_ok(), "an explicit value settles it");
        let off = TunedChoices { threshold: Tuned::Off, ..Default::default() };
        assert!(TunedSettings::resolve(&off, &[]).is_err());
        let off = TunedChoices { crf_bilateral_compat: Tuned::Off, ..Default::default() };
        let e = TunedSettings::resolve(&off, &[]).unwrap_err().to_string();
        assert!(e.contains("bilateral weight cannot be off"), "{e}");
        let mut other = tuned(None, None);
        other.crf_confidence = Some(0.8);
        let e = TunedSettings::resolve(
            &TunedChoices::default(),
            &[("a.onnx".into(), tuned(None, None)), ("b.onnx".into(), other)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ichseg.pseudo.crf_confidence") && e.contains("b.onnx says 0.8"), "{e}");
        let none = TunedSettings::resolve(&TunedChoices::default(), &[]).unwrap();
        assert_eq!(none.threshold, Setting { value: Some(DEFAULT_THRESHOLD), source: "default".into() });
    }
}
